"""``deltapatch`` command line: a thin layer over the library. Each command is a pair of
functions in ``COMMANDS`` (arguments, run); ``run`` returns the process exit code."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from . import metrics
from .backbones import list_backbones, load_backbone
from .data import list_builtins, load_test
from .errors import DeltaPatchError
from .model import BASE, PatchedModel
from .patch import TENSORS_FILE, read_config, read_tensors
from .train import TrainConfig, evaluate

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str):
    """Register ``run(args) -> exit code``; its ``arguments(parser)`` comes as ``run.arguments``."""

    def deco(run):
        COMMANDS[name] = (help, run.arguments, run)
        return run

    return deco


def _arguments(fn: Callable[[argparse.ArgumentParser], None]):
    def attach(run):
        run.arguments = fn
        return run
    return attach


def _backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help=f"backbone name, e.g. cifar_resnet56, resnet18 (all: {', '.join(list_backbones())})")
    p.add_argument("--weights", default=None,
                   help="weights: a .safetensors / torch file, or a named set (imagenet, cifar10); "
                        "default: random init")


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required,
                   help=f"patch task: image folder, .npz, or built-in ({', '.join(list_builtins())})")
    p.add_argument("--base-data", default=None,
                   help="base task data (its test split is scored with the backbone's own head)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the backbone's, or the patch's)")
    p.add_argument("--max-train", type=int, default=None, help="seeded subset of the train split")
    p.add_argument("--max-test", type=int, default=None, help="seeded subset of the test split")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train held out for validation (default 0.1)")


def _model(args: argparse.Namespace) -> PatchedModel:
    return PatchedModel(load_backbone(args.backbone, args.weights))


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


# ---------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    from .methods import METHODS

    _backbone_args(p)
    _data_args(p)
    p.add_argument("--out", required=True, type=Path, help="patch folder to write (run/ inside "
                   "holds checkpoint and per-epoch metrics; an interrupted run resumes)")
    p.add_argument("--method", default="delta", help=f"one of {', '.join(sorted(METHODS))}")
    p.add_argument("--stages", default="1",
                   help="Δ(n): last n stages (int), or comma-separated 0-based indices/names")
    p.add_argument("--norm", default="output", choices=["output", "skip", "none"],
                   help="where the patch's BatchNorm sits in each Δ-stage")
    p.add_argument("--reduction", type=int, default=4,
                   help="Δ-module second conv width C/r (4: DESIGN.md; 2: the paper's counts)")
    p.add_argument("--gate", default="delta",
                   help="where Λ comes from: delta (input-conditioned), learned, fixed, random, "
                        "existing (Table 8 ablations)")
    p.add_argument("--name", default=None, help="patch name (default: the data set's name)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW/SGD learning rate (default: the method's, 1e-2 for patches, 1e-3 for "
                        "finetune / paint / pnc)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--cache-features", default="auto", choices=["auto", "on", "off"],
                   help="train on cached frozen-trunk features (auto: exactly when augmentation "
                        "is off; on needs --no-augment)")
    p.add_argument("--cache-dtype", default="float32", choices=["float32", "float16"],
                   help="storage of cached features (float16 halves their memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (repeatable; VALUE parsed as JSON when it can be), "
                        "e.g. --option base_val_max=1000 (docs/METHODS.md lists them)")


def _parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option needs KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parse_stages(text: str) -> int | list:
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return [int(s) if s.strip().isdigit() else s.strip() for s in text.split(",") if s.strip()]


@command("train", "train a patch (or a baseline method) on a new task; prints JSON metrics")
@_arguments(_train_args)
def train_cmd(args: argparse.Namespace) -> int:
    from .bench.run import RunSpec, run_one
    from .methods import get_method

    lr = args.lr if args.lr is not None else get_method(args.method).default_lr
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                         optimizer=args.optimizer, weight_decay=args.weight_decay,
                         warmup_epochs=args.warmup_epochs, augment=not args.no_augment,
                         seed=args.seed, progress=not args.no_progress,
                         cache_features=args.cache_features, cache_dtype=args.cache_dtype)
    spec = RunSpec(backbone=args.backbone, weights=args.weights, data=args.data,
                   method=args.method, stages=_parse_stages(args.stages), norm=args.norm,
                   gate=args.gate, base_data=args.base_data, image_size=args.image_size,
                   max_train=args.max_train, max_test=args.max_test,
                   val_fraction=args.val_fraction, name=args.name, seed=args.seed, train=config,
                   options={"reduction": args.reduction, **_parse_options(args.option)})
    result = run_one(spec, args.out)
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    _print_json(result)
    return 0


# ---------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    _backbone_args(p)
    p.add_argument("--patch", required=True, type=Path,
                   help="a patch folder, or a baseline method's output folder (method.json + "
                        "weights.safetensors from train --method finetune/paint/adapter-*/"
                        "bn-adapt/pnc)")
    _data_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")


def _task_forwards(model: PatchedModel, folder: Path) -> tuple[dict, Callable, Callable]:
    """``(facts, patch forward, base forward)`` of a Δ-patch folder or a method artefact, each
    checked against the backbone before it is used."""
    from .methods.artefact import is_artefact, load_artefact
    from .preprocess import Preprocess
    if is_artefact(folder):
        config, outcome = load_artefact(folder, model)
        facts = {"method": config["method"], "trainable_params": outcome.trainable_params,
                 "preprocess": Preprocess.from_dict(config["preprocess"]),
                 **({"alpha": config["alpha"]} if "alpha" in config else {})}
        return facts, outcome.patch_forward, outcome.base_forward
    name = model.load_patch(folder)
    cfg = model.get_patch(name).config
    facts = {"method": cfg.method, "trainable_params": model.trainable_parameters(name),
             "preprocess": cfg.preprocess}
    return facts, lambda x: model(x, patch=name), model


@command("eval", "score a saved patch or method artefact on a task's test split (and the base "
                 "task); prints JSON")
@_arguments(_eval_args)
def eval_cmd(args: argparse.Namespace) -> int:
    model = _model(args)
    facts, patch_forward, base_forward = _task_forwards(model, args.patch)
    pre = facts.pop("preprocess").with_size(args.image_size)
    test, _ = load_test(args.data, pre.size, max_test=args.max_test, seed=args.seed)
    model.eval()
    patch_top1 = evaluate(patch_forward, test, pre)
    base_top1 = None
    if args.base_data:
        base, _ = load_test(args.base_data, pre.size, max_test=args.max_test, seed=args.seed)
        base_top1 = evaluate(base_forward, base, pre)
    _print_json(metrics.report(data=args.data, patch_top1=patch_top1, base_top1=base_top1,
                               patch_bytes=metrics.folder_bytes(args.patch),
                               n_test=len(test), **facts))
    return 0


# ---------------------------------------------------------------- predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    _backbone_args(p)
    p.add_argument("--patch", type=Path, default=None,
                   help="patch folder (default: the base task)")
    p.add_argument("--top", type=int, default=5, help="how many classes per image")
    p.add_argument("images", nargs="+", type=Path, help="image files")


@command("predict", "classify image files with a patch (or the base task); one JSON line each")
@_arguments(_predict_args)
def predict_cmd(args: argparse.Namespace) -> int:
    from .data.sets import to_image_tensor
    from .data.sources import decode_image

    model = _model(args).eval()
    name, names, pre = BASE, None, model.preprocess
    if args.patch is not None:
        name = model.load_patch(args.patch)
        cfg = model.get_patch(name).config
        names, pre = cfg.class_names, cfg.preprocess
    with torch.inference_mode():
        for path in args.images:
            if not path.is_file():
                raise DeltaPatchError(f"no image file {path}")
            x = to_image_tensor(decode_image(path.read_bytes(), str(path))[None], pre.size)
            probs = model(pre.normalize(x), patch=name).softmax(1)[0]
            top = probs.topk(min(args.top, probs.numel()))
            _print_json({"image": str(path), "task": name, "top": [
                {"class": int(i), "name": names[int(i)] if names else None, "prob": round(float(p), 5)}
                for p, i in zip(top.values, top.indices, strict=True)]})
    return 0


# ---------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", type=Path, help="patch folder or a method's train --out folder")


@command("info", "show what a patch folder or method artefact holds (config, tensors, sizes) as "
                 "JSON")
@_arguments(_info_args)
def info_cmd(args: argparse.Namespace) -> int:
    from .methods.artefact import is_artefact, read_artefact
    from .methods.common import WEIGHTS_FILE
    if is_artefact(args.patch):
        out, tensors = read_artefact(args.patch)
        file = WEIGHTS_FILE
    else:
        out, tensors, file = read_config(args.patch).to_json(), read_tensors(args.patch), TENSORS_FILE
    out.update({
        "tensors": len(tensors),
        "parameters": sum(t.numel() for k, t in tensors.items() if "running_" not in k
                          and "num_batches" not in k),
        "tensor_bytes": (args.patch / file).stat().st_size,
        "patch_bytes": metrics.folder_bytes(args.patch),
    })
    print(json.dumps(out, indent=2))
    return 0


# ---------------------------------------------------------------- verify
def _verify_args(p: argparse.ArgumentParser) -> None:
    _backbone_args(p)
    p.add_argument("--patch", type=Path, nargs="+", required=True, help="patch folder(s)")
    p.add_argument("--data", default=None, help="take inputs from this data's test split "
                   "(default: random normal inputs)")
    p.add_argument("-n", type=int, default=16, help="number of inputs (default 16)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


@command("verify", "prove base outputs are bit-identical with and without patches; exit 1 if not")
@_arguments(_verify_args)
def verify_cmd(args: argparse.Namespace) -> int:
    from .patch import fingerprint

    backbone = load_backbone(args.backbone, args.weights)
    size = args.image_size or backbone.deltapatch_preprocess.size
    if args.data:
        x = load_test(args.data, size, max_test=args.n, seed=args.seed)[0].images
        x = backbone.deltapatch_preprocess.normalize(x)
    else:
        x = torch.randn(args.n, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        before, fp_before = backbone(x), fingerprint(backbone)
        model = PatchedModel(backbone).eval()
        names = [model.load_patch(p) for p in args.patch]
        checks = {"base_with_patches_loaded": torch.equal(model(x), before)}
        for n in names:
            model(x, patch=n)  # exercise every patch
            model.set_patch(n)
            with model.disable_patch():
                checks[f"base_with_{n}_disabled"] = torch.equal(model(x), before)
        model.set_patch(None)
        for n in names:
            model.remove_patch(n)
        checks["base_after_removal"] = torch.equal(model(x), before)
        checks["backbone_weights_unchanged"] = fingerprint(backbone) == fp_before
    ok = all(checks.values())
    _print_json({"ok": ok, "n_inputs": int(x.shape[0]), "patches": names, "checks": checks})
    return 0 if ok else 1


from .bench import command as _bench_command  # noqa: E402,F401  (registers `bench`)
from .demo import HELP as _DEMO_HELP  # noqa: E402
from .demo import demo_arguments, demo_cmd  # noqa: E402

command("demo", _DEMO_HELP)(_arguments(demo_arguments)(demo_cmd))


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltapatch", description="Patch frozen pretrained CNNs with Δ-Networks.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"deltapatch {__version__}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a shared, loaded machine "
                             "1 is often several times faster (docs/PERFORMANCE.md)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, arguments, _run) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command][2](args)
    except (DeltaPatchError, ValueError, FileNotFoundError) as err:
        print(f"deltapatch {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # run the imported module's main: plug-in commands (bench)
    from deltapatch.cli import main as _main  # register into deltapatch.cli, not __main__

    sys.exit(_main())
