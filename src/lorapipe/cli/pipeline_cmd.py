"""`lorapipe pipeline run|watch|sagemaker-definition` and `lorapipe runs list|show|logs|cancel`.

Only argparse lives here; implementations are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from lorapipe.cli.config_args import add_override_argument

# Both torch-free at import time, so `--help` stays light.


def register(subparsers: argparse._SubParsersAction) -> None:
    pipeline = subparsers.add_parser(
        "pipeline",
        help="dataset -> validate -> train -> evaluate -> sample -> publish, locally or on SageMaker",
    )
    commands = pipeline.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND")
    pipeline.set_defaults(handler=lambda args: _print_help(pipeline))

    run = commands.add_parser(
        "run",
        help="start a run (validate, train, evaluate, sample, publish); Ctrl-C detaches, the run goes on",
        description="Validate the dataset, train a LoRA (skipped when dataset, config and base model are unchanged "
        "since a successful run), score its checkpoints and pick one (evaluate), check sample images, and publish "
        "the LoRA, train_summary.json, samples and sha256 files to --output and into the LoRA folder the server "
        "reads.",
    )
    run.add_argument("dataset", metavar="DATASET", help="NNNN-dataset folder or s3://BUCKET/NNNN-dataset/ prefix")
    _add_run_options(run)
    run.add_argument("--detach", action="store_true", help="print the run id and return at once")
    run.add_argument(
        "--foreground",
        action="store_true",
        help="run the steps in this process (no detached worker; stops when the terminal closes)",
    )
    run.set_defaults(handler=_run)

    watch = commands.add_parser(
        "watch",
        help="start a run whenever a new or changed NNNN-dataset appears in a store",
        description="Poll STORE (a folder or s3:// prefix holding NNNN-dataset folders) and start a run for each "
        "dataset whose content hash has not been run yet.",
    )
    watch.add_argument("store", metavar="STORE", help="folder or s3://BUCKET/PREFIX holding NNNN-dataset folders")
    _add_run_options(watch)
    watch.add_argument("--interval", type=float, default=60.0, metavar="S", help="seconds between polls (60)")
    watch.add_argument("--once", action="store_true", help="poll once, start what is new, and return")
    watch.add_argument("--wait", action="store_true", help="with --once: wait for the started runs to finish")
    watch.set_defaults(handler=_watch)

    definition = commands.add_parser(
        "sagemaker-definition",
        help="print a SageMaker Pipelines definition with the recipe's parameter names",
    )
    definition.add_argument("--sagemaker-role", metavar="ARN", help="execution role ARN for the training step")
    definition.add_argument("--name", default="lorapipe-training", help="the training step's name")
    definition.add_argument(
        "--upsert",
        metavar="PIPELINE",
        help="create or update this SageMaker pipeline instead of printing (needs --sagemaker-role)",
    )
    definition.add_argument(
        "--pipeline-role",
        metavar="ARN",
        help="role Pipelines starts the job with (deploy/ output PipelineExecutionRoleArn)",
    )
    definition.add_argument("--region", help="AWS region (default: the AWS config's)")
    definition.add_argument("--sagemaker-endpoint", metavar="URL", help="SageMaker API endpoint override")
    definition.set_defaults(handler=_definition)

    runs = subparsers.add_parser("runs", help="list, show, follow and cancel pipeline runs")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    runs.set_defaults(handler=lambda args: _print_help(runs))

    listing = runs_commands.add_parser("list", help="recent runs, newest first")
    _add_home(listing)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    show = runs_commands.add_parser("show", help="a run's status and steps; --follow reattaches to its log")
    _add_home(show)
    show.add_argument("run_id", metavar="RUN_ID", help="run id or a unique part of it")
    show.add_argument("--follow", action="store_true", help="print the log so far, then stream it until the run ends")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)

    logs = runs_commands.add_parser("logs", help="print a run's log")
    _add_home(logs)
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the run finishes")
    logs.set_defaults(handler=_logs)

    cancel = runs_commands.add_parser("cancel", help="stop a run (the trainer checkpoints; a SageMaker job is stopped)")
    _add_home(cancel)
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.set_defaults(handler=_cancel)


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", metavar="DIR", help="run database and run folders (default: $LORAPIPE_HOME or ~/.lorapipe)"
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    _add_home(parser)
    parser.add_argument(
        "--output",
        metavar="URL",
        help="folder or s3://BUCKET/PREFIX to publish to (sagemaker: "
        "a local dataset is uploaded under OUTPUT/datasets/ too)",
    )
    # Choices are checked by RunRequest/EvaluateOptions (one home); nothing of pipeline/ loads for other commands.
    parser.add_argument("--backend", default=None, help="local (default) or sagemaker")
    parser.add_argument(
        "--base-model", metavar="PATH_OR_ID", help="diffusers folder, single file or hub id (default: the config's)"
    )
    parser.add_argument("--config", metavar="TOML", help="Kohya training TOML (default: the dataset's own)")
    add_override_argument(parser)
    parser.add_argument("--lora-dir", metavar="DIR", help="the server's LoRA folder (default: HOME/loras)")
    parser.add_argument("--lora-name", metavar="NAME", help="published LoRA name (default: the config's output_name)")
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)",
    )
    parser.add_argument("--no-cache", action="store_true", help="train even if an identical run succeeded")
    parser.add_argument(
        "--deploy",
        metavar="ENDPOINT",
        help="after publish, add the LoRA to this SageMaker endpoint "
        "(see `lorapipe deploy`; needs --output s3://... unless the endpoint has a LoRA prefix)",
    )
    evaluate = parser.add_argument_group(
        "evaluate step",
        "score every checkpoint (as `lorapipe eval`) and publish the recommended one; the report "
        "goes to RUN/eval/eval.html, the measures into publish.json and the LoRA's ss_lorapipe_eval_* metadata",
    )
    evaluate.add_argument(
        "--evaluate",
        default=None,
        help="auto (default): when the metric models are on this machine (a folder, or a hub id in the "
        "Hugging Face cache); on: load them, downloading if need be, or fail the run",
    )
    evaluate.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_const",
        const="off",
        help="skip the evaluate step (same as --evaluate off)",
    )
    evaluate.add_argument(
        "--publish-checkpoint",
        default=None,
        help="publish the recommended checkpoint (default) or the final one",
    )
    evaluate.add_argument("--clip-model", metavar="PATH_OR_ID", help="CLIP model (default: CLIP ViT-L/14)")
    evaluate.add_argument("--dino-model", metavar="PATH_OR_ID", help="DINOv2 model (default: DINOv2 base)")
    evaluate.add_argument("--eval-steps", type=int, default=25, metavar="N", help="sampling steps per image (25)")
    evaluate.add_argument("--eval-images-per-prompt", type=int, default=2, metavar="N")
    sagemaker = parser.add_argument_group("sagemaker backend")
    sagemaker.add_argument("--sagemaker-image", metavar="URI", help="training image (TrainingDockerImage)")
    sagemaker.add_argument("--sagemaker-role", metavar="ARN", help="the job's execution role")
    sagemaker.add_argument("--instance-type", default="ml.g5.4xlarge", help="TrainingInstanceType (ml.g5.4xlarge)")
    sagemaker.add_argument("--instance-count", type=int, default=1)
    sagemaker.add_argument("--volume-size-gb", type=int, default=50, help="TrainingVolumeSizeInGB (50)")
    sagemaker.add_argument("--max-runtime-s", type=int, default=86400, help="MaxTrainingRuntimeInSeconds (86400)")
    sagemaker.add_argument("--spot", action="store_true", help="managed spot training (checkpoints resume it)")
    sagemaker.add_argument("--max-wait-s", type=int, help="spot: total wait incl. interruptions (> max runtime)")
    sagemaker.add_argument("--region", help="AWS region (default: the AWS config's)")
    sagemaker.add_argument("--sagemaker-endpoint", metavar="URL", help="SageMaker API endpoint override")
    sagemaker.add_argument("--poll-interval", type=float, default=30.0, metavar="S", help="job status poll (30)")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _request(args: argparse.Namespace, dataset: str):
    from lorapipe.pipeline.evaluate_stage import EvaluateOptions
    from lorapipe.pipeline.request import RunRequest, SageMakerOptions

    return RunRequest(
        dataset=dataset,
        base_model=args.base_model,
        output=args.output,
        **({"backend": args.backend} if args.backend else {}),
        config=os.path.abspath(args.config) if args.config else None,
        overrides=tuple(args.overrides),
        lora_dir=os.path.abspath(args.lora_dir) if args.lora_dir else None,
        lora_name=args.lora_name,
        s3_endpoint_url=args.s3_endpoint,
        use_cache=not args.no_cache,
        deploy_endpoint=args.deploy,
        sagemaker=SageMakerOptions(
            image=args.sagemaker_image,
            role_arn=args.sagemaker_role,
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            volume_size_gb=args.volume_size_gb,
            max_runtime_s=args.max_runtime_s,
            spot=args.spot,
            max_wait_s=args.max_wait_s,
            region=args.region,
            endpoint_url=args.sagemaker_endpoint,
            poll_interval_s=args.poll_interval,
        ),
        evaluate=EvaluateOptions(
            steps=args.eval_steps,
            images_per_prompt=args.eval_images_per_prompt,
            **_given(
                mode=args.evaluate,
                publish=args.publish_checkpoint,
                clip_model=_model_arg(args.clip_model),
                dino_model=_model_arg(args.dino_model),
            ),
        ),
    )


def _model_arg(value: str | None) -> str | None:
    """A local model folder as an absolute path (the worker runs elsewhere); a hub id as given."""
    return os.path.abspath(value) if value and os.path.isdir(value) else value


def _given(**values):
    """The options the user gave; the others keep EvaluateOptions' defaults."""
    return {key: value for key, value in values.items() if value is not None}


def _dataset_arg(value: str) -> str:
    return value if value.startswith("s3://") else os.path.abspath(value)


def _run(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.runs import create_run, follow_log, start_detached

    home = PipelineHome.resolve(args.home)
    record = create_run(_request(args, _dataset_arg(args.dataset)), home)
    print(f"run {record.id}  (folder {record.run_dir})", flush=True)
    if args.foreground:
        return _run_foreground(home, record.id)
    start_detached(home, record.id)
    if args.detach:
        return 0
    try:
        record = follow_log(home, record.id, sys.stdout)
    except KeyboardInterrupt:
        print(f"\ndetached: run {record.id} goes on; `lorapipe runs show {record.id} --follow` reattaches")
        return 0
    return _report_end(record)


def _run_foreground(home, run_id: str) -> int:
    import signal
    import threading

    from lorapipe.pipeline.records import RunStore
    from lorapipe.pipeline.runlog import Cancellation
    from lorapipe.pipeline.runner import execute_run
    from lorapipe.pipeline.runs import follow_log

    cancel = Cancellation()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.request())
    done = threading.Event()
    printer = threading.Thread(
        target=follow_log, args=(home, run_id, sys.stdout), kwargs={"should_stop": done.is_set}, daemon=True
    )
    printer.start()
    try:
        execute_run(home, run_id, cancel)
    finally:
        done.set()
        printer.join(timeout=5)
    return _report_end(RunStore(home.database).get(run_id))


def _report_end(record) -> int:
    if record.status == "succeeded":
        print(f"run {record.id}: succeeded")
        return 0
    print(f"run {record.id}: {record.status}: {record.error or ''}".rstrip(": "), file=sys.stderr)
    return 1


def _watch(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.watch import DatasetWatcher

    home = PipelineHome.resolve(args.home)
    template = _request(args, _dataset_arg(args.store).rstrip("/") + "/0000-template")
    watcher = DatasetWatcher(
        home, args.store if args.store.startswith("s3://") else os.path.abspath(args.store), template
    )
    from lorapipe.errors import LorapipeError

    while True:
        try:
            started = watcher.poll_once(sys.stdout)
        except LorapipeError as exc:
            if args.once:
                raise
            # A long-running watcher outlives a store that is briefly unreachable: report and poll again.
            print(f"watch: poll failed: {exc}", file=sys.stderr, flush=True)
            started = []
        if args.once:
            if args.wait:
                return max((_wait_quietly(home, run_id) for run_id in started), default=0)
            return 0
        time.sleep(args.interval)


def _wait_quietly(home, run_id: str) -> int:
    import io

    from lorapipe.pipeline.runs import follow_log

    return _report_end(follow_log(home, run_id, io.StringIO()))


def _definition(args: argparse.Namespace) -> int:
    from lorapipe.errors import PipelineError
    from lorapipe.pipeline.sagemaker_definition import pipeline_definition, upsert_pipeline

    if args.upsert:
        if not args.sagemaker_role:
            raise PipelineError("--upsert: give --sagemaker-role, the role SageMaker Pipelines runs the step with")
        print(
            upsert_pipeline(
                args.upsert,
                args.sagemaker_role,
                pipeline_role_arn=args.pipeline_role,
                region=args.region,
                endpoint_url=args.sagemaker_endpoint,
            )
        )
        return 0
    print(json.dumps(pipeline_definition(role_arn=args.sagemaker_role, step_name=args.name), indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.records import RunStore
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.runs import mark_lost_runs

    home = PipelineHome.resolve(args.home)
    mark_lost_runs(home)
    records = RunStore(home.database).list_runs(args.limit)
    if args.json:
        print(json.dumps([record.to_json() for record in records], indent=2, default=str))
        return 0
    if not records:
        print("no runs yet; start one with `lorapipe pipeline run DATASET`")
        return 0
    print(f"{'RUN':<24} {'STATUS':<10} {'BACKEND':<9} {'CREATED':<19} DATASET")
    for record in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        print(f"{record.id:<24} {record.status:<10} {record.backend:<9} {created:<19} {record.dataset}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.records import RunStore
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.runs import follow_log, mark_lost_runs

    home = PipelineHome.resolve(args.home)
    mark_lost_runs(home)
    store = RunStore(home.database)
    record = store.get(args.run_id)
    if args.follow and not record.finished:
        try:
            follow_log(home, record.id, sys.stdout)
        except KeyboardInterrupt:
            print(f"\ndetached: run {record.id} goes on")
        record = store.get(record.id)
    if args.json:
        print(json.dumps(record.to_json(), indent=2, default=str))
        return 0
    print(f"run      {record.id}\nstatus   {record.status}\nbackend  {record.backend}\ndataset  {record.dataset}")
    print(f"output   {record.output or '-'}\nfolder   {record.run_dir}")
    if record.error:
        print(f"error    {record.error}")
    for step in record.steps:
        took = f" {step.finished - step.started:.1f}s" if step.started and step.finished else ""
        print(f"  {step.name:<9} {step.status:<10}{took}  {step.detail or ''}".rstrip())
    # After --follow the exit code says how the run ended, as `pipeline run` does.
    return 1 if args.follow and record.status != "succeeded" else 0


def _logs(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.records import RunStore
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.runs import follow_log

    home = PipelineHome.resolve(args.home)
    record = RunStore(home.database).get(args.run_id)
    if args.follow:
        try:
            follow_log(home, record.id, sys.stdout)
        except KeyboardInterrupt:
            pass
        return 0
    log_path = record.run_dir / "run.log"
    if log_path.exists():
        sys.stdout.write(log_path.read_text(encoding="utf-8", errors="replace"))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from lorapipe.pipeline.request import PipelineHome
    from lorapipe.pipeline.runs import cancel_run

    record = cancel_run(PipelineHome.resolve(args.home), args.run_id)
    print(f"run {record.id}: {record.status}")
    return 0
