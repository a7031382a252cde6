"""The page's files as the server answers them, without a browser (test_serve_page.py drives one):
served from the package with a strict CSP, the backbone filled in escaped, nothing fetched from
elsewhere, and the admin endpoints as closed as before."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

import deltapatch as dp
from deltapatch.serve.app import create_app
from deltapatch.serve.page import index_html
from deltapatch.serve.patchset import PatchSet

KEY = "k" * 24


def test_page_files_headers_and_admin_rule(patchset):
    with TestClient(create_app(patchset, api_key=KEY), raise_server_exceptions=False) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert 'data-backbone="cifar_resnet20"' in page.text and "{{" not in page.text
        for asset, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
            r = c.get(f"/static/{asset}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
            assert r.headers["content-security-policy"] == csp
            text = r.text.replace('"http://www.w3.org/2000/svg"', "")  # a name, not a fetch
            assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), asset
        assert not re.search(r"(src|href)=\"https?://", page.text)
        assert "<script>" not in page.text and " style=" not in page.text  # CSP: files only
        for missing in ("/static/index.html", "/static/..%2Fpage.py", "/static/nope.js"):
            r = c.get(missing)
            assert r.status_code == 404 and "error" in r.json(), missing
        assert c.delete("/v1/patches/a").status_code == 401  # the page adds no way around it
        assert c.delete("/v1/patches/a", headers={"Referer": str(c.base_url.join("/"))}
                        ).status_code == 401


def test_index_escapes_what_it_fills_in(backbone):
    model = dp.PatchedModel(backbone, name='x"><script>alert(1)</script>')
    text = index_html(PatchSet(model).model).decode()
    assert "<script>alert" not in text and "&quot;&gt;&lt;script&gt;" in text
