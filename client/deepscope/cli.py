"""The ``deepscope`` command: analyze model files, list metrics and runs, capture activations.

Without ``--server`` it starts an embedded server on a free loopback port and stops it after.
Errors are one line on stderr and a non-zero exit code (2 for bad usage), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import catalogue, times
from .client import Client, Model, connect
from .errors import DeepscopeError, InvalidArgument, NotFound, Unavailable
from .results import BOOKKEEPING_PREFIXES, Run
from .values import from_value

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    """A user-facing error: printed as one line."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("DEEPSCOPE_SERVER"),
        help="HOST:PORT of a running server (default: start an embedded one)",
    )
    parser.add_argument("--token", default=os.environ.get("DEEPSCOPE_TOKEN"), help="auth token (or $DEEPSCOPE_TOKEN)")
    parser.add_argument("--store", default=None, help="store directory of the embedded server")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscope",
        description="Look inside neural networks: per-layer metrics, "
        "activations and weight graphs from ONNX and PyTorch models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="run metrics on one model or a series of checkpoints")
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="model files (.onnx, .pt2, .pt) or server model ids/names; "
        "several = checkpoints of one training run, in order",
    )
    p.add_argument(
        "--data",
        default="digits",
        help="a server dataset (digits, synthetic, or a plugin's; `deepscope metrics` lists them) "
        "| FILE.npy | FILE.npz (arrays x[, y])",
    )
    p.add_argument(
        "--metrics",
        default="all",
        help="comma-separated names or globs (e.g. cnt.*,fractal.ss_rate); "
        "'all' = every metric that applies to the model (the others are reported as skipped)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="drop metrics by name or glob (repeatable or comma-separated, e.g. basins.*,modes.*)",
    )
    p.add_argument("--layers", nargs="*", default=[], help="layer names, globs or kind:KIND (default: all that apply)")
    p.add_argument("--param", action="append", default=[], metavar="METRIC.KEY=VALUE", help="metric parameter")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="at most this many samples (0 = all)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metric-timeout", type=float, default=0.0, help="seconds per metric stage (0 = server default)")
    p.add_argument("--report", type=Path, help="write a self-contained HTML report")
    p.add_argument("--json", type=Path, help="write results as JSON (arrays over 256 values go to a .npz next to it)")
    _common(p)

    p = sub.add_parser("metrics", help="list the server's metrics")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("models", help="list the server's models")
    _common(p)

    p = sub.add_parser("runs", help="list recent runs")
    p.add_argument("--limit", type=int, default=20)
    _common(p)

    p = sub.add_parser("show", help="show a run's results")
    p.add_argument("run_id")
    p.add_argument("--json", type=Path, help="write results as JSON (arrays over 256 values go to a .npz next to it)")
    p.add_argument("--report", type=Path, help="write a self-contained HTML report")
    _common(p)

    p = sub.add_parser("capture", help="capture layer activations into an .npz file")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--layers", nargs="+", required=True)
    p.add_argument("--data", default="digits", help="digits | FILE.npy | FILE.npz")
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--out", type=Path, required=True)
    _common(p)
    return parser


def parse_value(text: str) -> Any:
    """--param values: int, then float, then true/false, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        metric, dot, name = key.rpartition(".")
        if not sep or not dot or "." not in metric:
            raise CliError(
                f"--param '{item}': expected METRIC.KEY=VALUE, e.g. cnt.node_strength.mode=graph", EXIT_USAGE
            )
        params.setdefault(metric, {})[name] = parse_value(value)
    return params


def load_data(spec: str, limit: int = 0) -> str | tuple[np.ndarray, np.ndarray | None]:
    """A .npy/.npz file is read here; any other name is a server-side dataset (a plugin), checked there."""
    path = Path(spec)
    if path.suffix not in (".npy", ".npz"):
        if path.exists() or "/" in spec:
            raise CliError(
                f"--data {spec}: use a .npy or .npz file, or a server dataset name (`deepscope metrics` lists them)",
                EXIT_USAGE,
            )
        return spec
    if not path.exists():
        raise CliError(f"data file not found: {spec}", EXIT_USAGE)
    if path.suffix == ".npy":
        x, y = np.load(path, allow_pickle=False), None
    else:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            xkey = "x" if "x" in keys else keys[0]
            x = archive[xkey]
            ykey = next((k for k in ("y", "labels") if k in keys), None)
            y = archive[ykey] if ykey else None
    if limit:
        x, y = x[:limit], None if y is None else y[:limit]
    return x, y


def open_client(args: argparse.Namespace) -> Client:
    progress = not args.quiet  # a bar on a terminal, one line per finished metric in a log
    if args.server:
        client = connect(args.server, token=args.token, progress=progress)
        try:
            client.health()
        except Unavailable as exc:
            client.close()
            raise CliError(f"cannot reach the server at {args.server}: {exc.details}", EXIT_UNREACHABLE) from None
        return client
    try:
        return Client.embedded(store=args.store, progress=progress)
    except Exception as exc:  # the embedded server's own message says why
        raise CliError(f"could not start the embedded server: {exc}") from None


def resolve_model(client: Client, ref: str) -> Model:
    path = Path(ref)
    if path.is_file():
        return client.upload_model(path)
    if path.suffix in (".onnx", ".pt2", ".pt", ".pth") or os.sep in ref:
        raise CliError(f"model file not found: {ref}")
    return client.model(ref)


# ---------------------------------------------------------------- printing


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str], out: TextIO = sys.stdout) -> None:
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=out)


def print_run(run: Run, out: TextIO = sys.stdout, max_keys: int = 4) -> None:
    """Per metric, a table of layers and headline values; for a series, the first value per checkpoint."""
    skipped = sum(r.status == "skipped" for r in run.results)
    seconds = times.seconds(run.info.duration)
    print(
        f"run {run.id}: {run.status}, {run.info.num_samples} samples, {seconds:.1f} s, "
        f"{run.info.num_results} results ({run.info.num_failed} failed"
        f"{f', {skipped} skipped' if skipped else ''})",
        file=out,
    )
    if run.info.error:
        print(f"  error: {run.info.error}", file=out)
    checkpoints = sorted({r.checkpoint for r in run.results})
    for metric in run.metrics:
        keys = run.headline_keys(metric, max_keys)
        rows: dict[str, dict[str, Any]] = {}
        for r in run.results:
            if r.metric != metric:
                continue
            row = rows.setdefault(r.layer or "(model)", {"layer": r.layer or "(model)", "status": "ok"})
            if r.status != "ok":
                label = "skipped" if r.status == "skipped" else "FAILED"
                row["status"] = f"{label}: " + (r.error.splitlines() or ["?"])[0][:70]
                continue
            scalars = {i.key: i.scalar for i in r.items if i.WhichOneof("value") == "scalar"}
            if not any(k in scalars for k in keys):  # e.g. a (model) row with keys of its own
                own = [
                    k for k in scalars if k not in r.params and k != "seed" and not k.startswith(BOOKKEEPING_PREFIXES)
                ]
                values = ", ".join(f"{k}={_fmt(scalars[k])}" for k in own[:max_keys])
                row["values"] = (
                    values if len(checkpoints) == 1 else f"{row.get('values', '')} @{r.checkpoint}: {values}".strip()
                )
            elif len(checkpoints) > 1:
                if keys:
                    row[f"{keys[0]}@{r.checkpoint}"] = scalars.get(keys[0], "")
            else:
                row.update({k: scalars.get(k, "") for k in keys})
        columns = [f"{keys[0]}@{c}" for c in checkpoints] if len(checkpoints) > 1 and keys else keys
        if any("values" in row for row in rows.values()):
            columns = [*columns, "values"]
        print(f"\n{metric}", file=out)
        print_table(list(rows.values()), ["layer", *columns, "status"], out)


def write_outputs(run: Run, json_path: Path | None, report_path: Path | None) -> None:
    if json_path:
        from .export import write_json

        _, sidecar = write_json(run, json_path)  # large arrays go to a .npz next to the JSON
        print(f"wrote {json_path}" + (f" and {sidecar}" if sidecar else ""), file=sys.stderr)
    if report_path:
        from .report import write_report

        write_report(run, report_path)
        print(f"wrote {report_path}", file=sys.stderr)


# ---------------------------------------------------------------- commands


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def metric_patterns(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in args.metrics.split(",") if m.strip()]


def check_usage_early(args: argparse.Namespace) -> None:
    """Before an embedded server starts: check metrics, params and layers against the caches."""
    if args.server:
        return  # a running server answers ListMetrics at once: checked after connecting
    args.fingerprint = catalogue.embedded_fingerprint()
    known = catalogue.load_catalogue(args.fingerprint)
    if known is not None:
        catalogue.check_metrics(known, metric_patterns(args), parse_params(args.param))
    first = Path(args.models[0])
    if args.layers and first.is_file():
        layers = catalogue.load_layers(args.fingerprint, catalogue.file_model_id(first))
        if layers is not None:
            catalogue.check_layers(layers, args.layers)


def check_usage(args: argparse.Namespace, client: Client, models: Sequence[Model] = ()) -> None:
    """With a server at hand: check (and cache) the catalogue, then the first model's layers."""
    if not models:
        infos = client.metric_infos()
        if getattr(args, "fingerprint", None):
            catalogue.save_catalogue(args.fingerprint, infos)
        catalogue.check_metrics(infos, metric_patterns(args), parse_params(args.param))
        return
    fingerprint = getattr(args, "fingerprint", None)
    if args.layers or fingerprint:
        layers = [(layer.name, layer.kind) for layer in models[0].detail().layers]
        if fingerprint:
            catalogue.save_layers(fingerprint, models[0].id, layers)
        catalogue.check_layers(layers, args.layers)


def cmd_analyze(args: argparse.Namespace, client: Client) -> int:
    params = parse_params(args.param)
    data = load_data(args.data, args.limit)
    check_usage(args, client)
    models = [resolve_model(client, ref) for ref in args.models]
    check_usage(args, client, models)
    for note in dict.fromkeys(note for model in models for note in model.notes):
        print(f"note: {note}", file=sys.stderr)  # once per run, however many checkpoints share it
    metrics = metric_patterns(args)
    exclude = [pattern for item in args.exclude for pattern in _split(item)]
    run = client.analyze(
        models,
        data=data,
        metrics=metrics,
        exclude=exclude,
        layers=args.layers,
        params=params,
        batch_size=args.batch_size,
        seed=args.seed,
        limit=args.limit or None,
        split=args.split,
        metric_timeout=args.metric_timeout or None,
    )
    print_run(run)
    write_outputs(run, args.json, args.report)
    return 0 if run.status == "completed" else EXIT_ERROR


def _param_json(p: Any) -> dict[str, Any]:
    """A ParamSpec as JSON: type, default and, where set, the allowed range or choices."""
    out = {"type": p.type, "default": from_value(p.default)}
    cast = int if p.type == "int" else float  # bounds travel as doubles
    out.update({bound: cast(getattr(p, bound)) for bound in ("min", "max") if p.HasField(bound)})
    if p.choices:
        out["choices"] = [from_value(c) for c in p.choices]
    return out


def cmd_metrics(args: argparse.Namespace, client: Client) -> int:
    infos = client.metric_infos()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "description": m.description,
                        "plugin": m.plugin,
                        "params": {p.name: _param_json(p) for p in m.params},
                    }
                    for m in infos.metrics
                ],
                indent=1,
            )
        )
        return 0
    rows = [
        {
            "name": m.name,
            "needs": ",".join(m.needs),
            "plugin": f"{m.plugin} {m.plugin_version}",
            "description": m.description[:70],
        }
        for m in infos.metrics
    ]
    print_table(rows, ["name", "needs", "plugin", "description"])
    print(f"\ndatasets (--data NAME): {', '.join(infos.datasets) or 'none'}")
    for error in infos.plugin_errors:
        print(f"warning: {error}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace, client: Client) -> int:
    rows = [
        {"id": m.id[:12], "name": m.name, "format": m.format, "bytes": m.info.size_bytes, "source": m.info.source}
        for m in client.models()
    ]
    print_table(rows, ["id", "name", "format", "bytes", "source"])
    return 0


def cmd_runs(args: argparse.Namespace, client: Client) -> int:
    rows = [
        {
            "run": r.id,
            "status": r.status,
            "created": times.iso(r.info.created_time)[:19],
            "models": len(r.info.config.models),
            "metrics": ",".join(m.name for m in r.info.config.metrics)[:50],
            "results": r.info.num_results,
        }
        for r in client.runs(args.limit)
    ]
    print_table(rows, ["run", "status", "created", "models", "metrics", "results"])
    return 0


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    run = client.get_run(args.run_id)
    print_run(run)
    write_outputs(run, args.json, args.report)
    return 0


def cmd_capture(args: argparse.Namespace, client: Client) -> int:
    model = resolve_model(client, args.model)
    data = load_data(args.data, args.limit)
    if isinstance(data, str):
        if data != "digits":
            raise CliError("capture needs real inputs: --data digits or a .npy/.npz file")
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise CliError(
                "--data digits on the client needs scikit-learn: pip install 'deepscope[digits]', "
                "or pass your inputs as a .npy/.npz file"
            ) from None
        x = (load_digits().data[: args.limit or None] / 16.0).astype(np.float32)
        shape = [d if d > 0 else -1 for d in model.info.inputs[0].shape.dims]
        x = x.reshape([-1, *shape[1:]]) if len(shape) > 1 else x
    else:
        x = data[0]
    acts = client.capture(model, x, layers=args.layers)
    arrays = {**acts, **{f"output/{k}": v for k, v in acts.model_outputs.items()}}
    np.savez(args.out, **arrays)  # type: ignore[arg-type]  # the stub types **kwds as allow_pickle
    for name, array in acts.items():
        print(f"{name}: {list(array.shape)} {array.dtype}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


COMMANDS = {
    "analyze": cmd_analyze,
    "metrics": cmd_metrics,
    "models": cmd_models,
    "runs": cmd_runs,
    "show": cmd_show,
    "capture": cmd_capture,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "analyze":
            parse_params(args.param)  # bad usage fails before a server starts
            for ref in args.models:
                if Path(ref).suffix in (".onnx", ".pt2", ".pt", ".pth") and not Path(ref).is_file():
                    raise CliError(f"model file not found: {ref}")
            check_usage_early(args)
        with open_client(args) as client:
            return COMMANDS[args.command](args, client)
    except CliError as exc:
        print(f"deepscope: error: {exc}", file=sys.stderr)
        return exc.code
    except catalogue.UsageError as exc:
        print(f"deepscope: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InvalidArgument, NotFound) as exc:  # the server found the request itself wrong: bad usage
        print(f"deepscope: error: {type(exc).__name__}: {exc.details}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as exc:
        print(f"deepscope: error: server unavailable: {exc.details}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DeepscopeError as exc:
        print(f"deepscope: error: {type(exc).__name__}: {exc.details}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_ERROR
    except (FileNotFoundError, ValueError) as exc:
        print(f"deepscope: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("deepscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
