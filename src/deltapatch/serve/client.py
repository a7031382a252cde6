"""A small client of ``deltapatch serve``, standard library only (``deltapatch predict --server``
must not need the server's dependencies).

    from deltapatch.serve.client import Client
    c = Client("http://127.0.0.1:8000", api_key=None)
    c.predict(open("cat.jpg", "rb").read(), patch="flowers", top_k=3)
    c.predict(image, patches=["flowers", "__base__"])      # fan-out
    c.upload("out/flowers"); c.delete("flowers"); c.patches()
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DeltaPatchError
from ..patch import CONFIG_FILE, TENSORS_FILE


class ServerError(DeltaPatchError):
    """The server answered with an error (``status`` holds the HTTP code) or was unreachable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}" if status else message)
        self.status = status


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http:// or https:// URL, got {url!r}")
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def health(self) -> dict:
        return self._call("GET", "/health")

    def ready(self) -> dict:
        return self._call("GET", "/ready")

    def patches(self) -> list[dict]:
        return self._call("GET", "/v1/patches")["patches"]

    def predict(self, image: bytes, patch: str | None = None, patches: list[str] | None = None,
                top_k: int = 5, return_logits: bool = False) -> dict:
        """One image file's bytes (PNG, JPEG, ...) → the server's answer (see docs/SERVING.md)."""
        body: dict = {"image": base64.b64encode(image).decode(), "top_k": top_k}
        if patches is not None:
            body["patches"] = list(patches)
        elif patch is not None:
            body["patch"] = patch
        if return_logits:
            body["return_logits"] = True
        return self._call("POST", "/v1/predict", json.dumps(body).encode(), "application/json")

    def upload(self, folder: str | Path) -> str:
        """Send a patch folder's two files; returns the name the server gave it."""
        folder = Path(folder)
        files = {n: (folder / n).read_bytes() for n in (CONFIG_FILE, TENSORS_FILE)}
        body, ctype = multipart(files)
        return self._call("POST", "/v1/patches", body, ctype, admin=True)["name"]

    def delete(self, name: str) -> dict:
        from urllib.parse import quote

        return self._call("DELETE", f"/v1/patches/{quote(name, safe='')}", admin=True)

    def _call(self, method: str, path: str, body: bytes | None = None,
              ctype: str | None = None, admin: bool = False) -> dict:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        if admin and self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except ValueError:
                message = str(err.reason)
            raise ServerError(err.code, message) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ServerError(0, f"cannot reach {self.url}: {reason}") from None


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    """``multipart/form-data`` with one file part per entry (field name = file name)."""
    boundary = "deltapatch-" + secrets.token_hex(12)
    parts = []
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"
