"""Build a TensorRT (or TensorRT-RTX) engine from an ONNX model and report what the builder did.

    profile = parse_profile("x:1x3x224x224,8x3x224x224,16x3x224x224")
    result = build_engine("model.onnx", BuildOptions(profiles=(profile,), opt_level=3), output="model.plan")

The report's build section (`BuildResult.section()`, a `BuildSection`) records the options that ran, the network's
and the engine's layers, the engine size and build time, the timing cache's fate, every parser and builder log line,
and the warnings fuser recognizes in them. Failures are one-line fuser errors: a bad option or profile is a
UsageError, a node the ONNX parser rejects or a builder failure is a ModelError naming what failed.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fuser.errors import ModelError, UsageError
from fuser.model_io import PROTOBUF_LIMIT
from fuser.outputs import OutputPlan, finish, swap_in, temporary_file, temporary_folder, write_atomic
from fuser.progress import Progress, as_progress
from fuser.trt.backend import Backend, load_backend, visible_gpu
from fuser.trt.logs import BuildLog, LogLine, RecognizedWarning, capture
from fuser.trt.profiles import Profile, check_profiles, model_inputs
# One line of the builder's verbose "Engine Layer Information" log:
#   Layer(Myelin): {ForeignNode[conv0...relu0]}, Tactic: 0x0000000000000000, x (Float[-1,3,16,16]) -> y (...)
ENGINE_LAYER = re.compile(r"Layer\((?P<type>[^)]*)\): (?P<name>.*?), Tactic: (?P<tactic>[^,]*), "
                          r"(?P<inputs>.*?) ?-> (?P<outputs>.*)")


@dataclass(frozen=True)
class BuildOptions:
    """How to build. Each field is the `fuser build` option of the same name; None keeps the backend's default."""

    profiles: tuple[Profile, ...] = ()  # one optimization profile each (parse_profile)
    timing_cache: Path | None = None  # created when missing, reused when its key matches
    opt_level: int | None = None  # builder optimization level 0..5
    refit: bool = False
    version_compatible: bool = False  # TensorRT only
    hardware_compat: str | None = None  # none | ampere_plus | same_compute_capability; TensorRT only
    tactic_sources: str | None = None  # "A,B": exactly these; "+A,-B": the default set changed
    max_aux_streams: int | None = None
    workspace_mib: int | None = None
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets ("8.6", "12.0", "current"); default: portable
    fp16: bool = False  # TensorRT only: RTX takes precision from the graph
    bf16: bool = False  # TensorRT only
    tf32: bool | None = None
    backend: str | None = None  # tensorrt | tensorrt_rtx; default: $FUSER_TRT_BACKEND, else tensorrt if importable


# ------------------------------------------------------------------------------ the report's build section
# Field metadata is the report codec's (fuser/report/codec.py). RECORDED: None only when a saved report lacks it.
RECORDED = {"null": False}

@dataclass
class BackendInfo:
    name: str  # tensorrt | tensorrt_rtx
    version: str


@dataclass
class NetworkInfo:
    layer_count: int
    layers: list[dict[str, Any]]  # name, type, precision (the type of its first output)


@dataclass
class EngineInfo:
    path: str | None  # null: not written (fuser audit --build)
    size_bytes: int
    build_seconds: float = field(metadata={"digits": 3})  # metadata: see fuser/report/codec.py
    layers: list[dict[str, Any]]
    layers_source: str  # "inspector" (IEngineInspector, JSON) or "builder-log" (no GPU to load the engine)


@dataclass
class TimingCacheInfo:
    path: str
    status: str  # created, loaded (given to the builder) or replaced (its key did not match this build)
    accepted_by_builder: bool | None  # whether the builder could read what was loaded
    bytes_written: int
    key: dict[str, Any]  # backend, version, gpu, targets


@dataclass
class BuildSection:
    """The report's `build`: what was built with which options, and what the builder said. Read back from a saved
    report, a part it does not have is null (`warnings`: the audit cannot check a warning id then)."""

    backend: BackendInfo | None = field(default=None, metadata=RECORDED)
    options: BuildOptions | None = field(default=None, metadata=RECORDED)
    network: NetworkInfo | None = field(default=None, metadata=RECORDED)
    engine: EngineInfo | None = field(default=None, metadata=RECORDED)
    timing_cache: TimingCacheInfo | None = None  # None: no --timing-cache
    warnings: list[RecognizedWarning] | None = field(default=None, metadata=RECORDED)
    log: list[LogLine] | None = field(default=None, metadata=RECORDED)


@dataclass
class BuildResult:
    backend: str
    backend_version: str
    engine: bytes = field(repr=False)
    engine_path: Path | None
    build_seconds: float
    network_layers: list[dict]  # name, type, precision (the type of its first output)
    engine_layers: list[dict]
    engine_layers_source: str  # "inspector" (IEngineInspector, JSON) or "builder-log" (no GPU to load the engine)
    timing_cache: TimingCacheInfo | None
    options: BuildOptions
    log: BuildLog = field(repr=False)

    @property
    def engine_size(self) -> int:
        return len(self.engine)

    @property
    def warnings(self) -> list[RecognizedWarning]:
        return self.log.recognized()

    def section(self) -> BuildSection:
        return BuildSection(
            BackendInfo(self.backend, self.backend_version), self.options,
            NetworkInfo(len(self.network_layers), self.network_layers),
            EngineInfo(str(self.engine_path) if self.engine_path else None, self.engine_size, self.build_seconds,
                       self.engine_layers, self.engine_layers_source),
            self.timing_cache, self.warnings, list(self.log.lines))


def build_engine(model: str | Path | onnx.ModelProto, options: BuildOptions | None = None,
                 output: str | Path | None = None, *, progress=None) -> BuildResult:
    """Parse `model` with the ONNX parser, build it with `options`, write the engine to `output` if given.
    `progress` (fuser.progress) is told the build's phases as the builder reports them."""
    options = options or BuildOptions()
    progress = as_progress(progress)
    plan = OutputPlan()
    if not isinstance(model, onnx.ModelProto):
        plan.read("the input model", model)
    plan_build_outputs(plan, options, "output", output)
    plan.check()
    backend = load_backend(options.backend)
    progress.stage(f"building {output or 'an engine'} with {backend.label}")
    with _onnx_file(model) as (path, proto), capture(backend.trt) as (logger, log):
        check_profiles(list(options.profiles), model_inputs(proto))
        log.phase = "configure"
        builder = backend.trt.Builder(logger)
        config = builder.create_builder_config()
        _configure(backend, builder, config, options, log)
        log.phase = "parse"
        weakly_typed = bool(backend.precision_flags(options.fp16, options.bf16))
        network = backend.create_network(builder, weakly_typed)
        parser = backend.trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            raise _parser_failure(backend, parser, proto, model)
        network_layers = _network_layers(network)
        log.phase = "build"
        cache = _TimingCache(Path(options.timing_cache), backend, options) if options.timing_cache else None
        if cache:
            cache.attach(config, log)
        build_start, started = len(log.lines), time.perf_counter()
        monitor = _monitor(backend.trt, progress)
        config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - started
        if monitor.error is not None:  # Ctrl-C or SIGTERM during the build: the monitor cancelled it
            raise monitor.error
        if serialized is None:
            raise _build_failure(backend, log, build_start)
        engine = bytes(serialized)
        if cache:
            cache.save(config)
        log.phase = "inspect"
        engine_layers, source = _engine_layers(backend, logger, engine, log)
    if output is not None:
        write_atomic(output, engine)
    return BuildResult(backend.name, backend.version, engine, Path(output) if output else None, seconds,
                       network_layers, engine_layers, source, cache.info() if cache else None, options, log)


def _monitor(trt, progress: Progress):
    """The builder's progress monitor (TensorRT's and TensorRT-RTX's IProgressMonitor): tells `progress` the phase
    under way and how far the outermost phase is. Whatever the callback raises (Ctrl-C or SIGTERM land there during
    a build) never goes into the builder: the build is cancelled (step_complete returns False) and build_engine
    raises it once the builder has returned."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: list[tuple[str, int]] = []  # (name, steps), outermost first
            self.top_done = 0  # steps of the outermost phase completed
            self.error: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._guarded(self._start, phase_name, num_steps)

        def step_complete(self, phase_name, step):
            self._guarded(self._step, step)
            return self.error is None

        def phase_finish(self, phase_name):
            self._guarded(self._finish, phase_name)

        def _start(self, name: str, steps: int) -> None:
            if not self.phases:
                self.top_done = 0
            self.phases.append((name, steps))
            self._tell()

        def _step(self, step: int) -> None:
            if len(self.phases) == 1:
                self.top_done = step + 1
            self._tell()

        def _finish(self, name: str) -> None:
            if self.phases and self.phases[-1][0] == name:
                self.phases.pop()

        def _tell(self) -> None:
            if self.phases:
                progress.step(self.phases[-1][0].lower(), done=self.top_done, total=self.phases[0][1])

        def _guarded(self, call, *args) -> None:
            try:
                call(*args)
            except BaseException as exc:  # noqa: BLE001 - raised again by build_engine, outside the builder
                self.error = self.error or exc

    return Monitor()


def plan_build_outputs(plan: OutputPlan, options: BuildOptions, flag: str, engine: Path | None) -> None:
    """Add what a build writes to a command's plan: the engine, and the timing cache with its key file."""
    plan.write(flag, engine)
    if options.timing_cache:
        key = timing_cache_key_file(options.timing_cache)
        plan.write("--timing-cache", options.timing_cache, ("its key file", key))


def timing_cache_key_file(cache: str | Path) -> Path:
    """Where the key of a timing cache is kept: FILE.meta.json beside FILE."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".meta.json")


@contextlib.contextmanager
def _onnx_file(model):
    """Yield (a file TensorRT can parse, the model without its external tensor data).

    TensorRT parses from a file so that external data beside the model is found; a ModelProto is saved to a temporary
    folder first (with its tensors as external data when it is too big for one protobuf).
    """
    if isinstance(model, onnx.ModelProto):
        with temporary_folder("fuser-trt-") as folder:
            path = folder / "model.onnx"
            if model.ByteSize() > PROTOBUF_LIMIT:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)  # saving as external data rewrites the tensors it saves
                onnx.save_model(copy, path, save_as_external_data=True, location="model.onnx.data")
            else:
                onnx.save_model(model, path)
            yield path, model
        return
    path = Path(model)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for a file that is not ONNX
        raise ModelError(f"{path} is not a readable ONNX model: {error}") from None
    yield path, proto


def _configure(backend: Backend, builder, config, options: BuildOptions, log: BuildLog) -> None:
    """Apply `options` to the builder config; UsageError for a value the backend cannot take."""
    trt = backend.trt
    for text in backend.ignored_options(options):
        log.warn(text)
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compat:
        backend.set_hardware_compat(config, options.hardware_compat)
    if options.tactic_sources is not None:
        config.set_tactic_sources(_tactic_mask(backend, options.tactic_sources, config.get_tactic_sources()))
    if options.max_aux_streams is not None:
        config.max_aux_streams = options.max_aux_streams
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for flag in backend.precision_flags(options.fp16, options.bf16):
        config.set_flag(flag)
    if options.tf32 is not None:
        (config.set_flag if options.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    backend.set_targets(config, tuple(options.compute_capabilities))
    for profile in options.profiles:
        trt_profile = builder.create_optimization_profile()
        for name, shapes in profile.items():
            trt_profile.set_shape(name, *shapes)
        config.add_optimization_profile(trt_profile)


def _tactic_mask(backend: Backend, spec: str, default: int) -> int:
    """`A,B` enables exactly A and B; `+A,-B` adds A to and removes B from the default set."""
    sources = backend.trt.TacticSource.__members__
    items = [item.strip() for item in spec.split(",") if item.strip()]
    mask = default if any(item[0] in "+-" for item in items) else 0
    for item in items:
        name = item.lstrip("+-").upper()
        if name not in sources:
            raise UsageError(f"--tactic-sources: {backend.label} has no tactic source '{name}' "
                             f"(it has {', '.join(sources)})")
        bit = 1 << int(sources[name])
        mask = mask & ~bit if item[0] == "-" else mask | bit
    return mask


def _network_layers(network) -> list[dict]:
    layers = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        precision = layer.get_output_type(0).name if layer.num_outputs else None
        layers.append({"name": layer.name, "type": layer.type.name, "precision": precision})
    return layers


def _parser_failure(backend: Backend, parser, proto: onnx.ModelProto, model) -> ModelError:
    """One line for the parser's first error, naming the ONNX node it is about."""
    source = "the model" if isinstance(model, onnx.ModelProto) else str(model)
    if not parser.num_errors:
        return ModelError(f"{backend.label} could not parse {source}")
    error = parser.get_error(0)
    reason = error.desc().strip().splitlines()[0]
    if "Plugin not found" in reason:
        reason = "TensorRT has no importer for this op and no plugin registered for it"
    more = f" (and {parser.num_errors - 1} more errors)" if parser.num_errors > 1 else ""
    index = error.node()
    if index < 0:
        return ModelError(f"{backend.label} could not parse {source}: {reason}{more}")
    node = proto.graph.node[index] if index < len(proto.graph.node) else None
    if node is not None and node.op_type != error.node_operator():
        node = None  # an error inside a subgraph counts nodes there
    name = error.node_name() or (node.name if node else "")
    op = f"{node.domain} {node.op_type}" if node is not None and node.domain else error.node_operator()
    where = f"'{name}' (#{index}, {op})" if name else f"#{index} ({op})"
    return ModelError(f"{backend.label}'s ONNX parser rejected node {where} in {source}: {reason}{more}")


def _build_failure(backend: Backend, log: BuildLog, build_start: int) -> ModelError:
    """The builder's last error of this build, with fuser's explanation where it recognizes it."""
    errors = log.errors(build_start)
    reason = errors[-1].strip().splitlines()[0] if errors else "the builder returned no engine and logged no error"
    hint = next((w.explanation for w in log.recognized(build_start) if errors and errors[-1] in w.lines), None)
    return ModelError(f"{backend.label} could not build the engine: {reason}" + (f" ({hint})" if hint else ""))


class _TimingCache:
    """`--timing-cache FILE`, keyed in FILE.meta.json: loaded when the key matches this build, then written back.

    The key is backend, version, the visible GPU's compute capability and (TensorRT-RTX) the target compute
    capabilities. A cache with another key, or none, is a warning: this build starts empty and replaces it.
    """

    def __init__(self, path: Path, backend: Backend, options: BuildOptions):
        self.path, self.backend = path, backend
        self.meta_path = timing_cache_key_file(path)
        self.key = {"backend": backend.name, "version": backend.version, "gpu": visible_gpu(),
                    "targets": backend.targets(tuple(options.compute_capabilities))}
        self.status = "created"  # then "loaded" (given to the builder) or "replaced" (key mismatch)
        self.accepted: bool | None = None  # whether the builder could read what was loaded
        self.bytes_written = 0
        self._cache = None  # held here: TensorRT needs it alive until the engine is built

    def attach(self, config, log: BuildLog) -> None:
        data = b""
        if self.path.exists():
            stored = self._stored_key()
            if stored == self.key:
                data, self.status = self.path.read_bytes(), "loaded"
            else:
                self.status = "replaced"
                log.warn(f"timing cache {self.path} has no readable key in {self.meta_path.name}" if stored is None
                         else f"timing cache {self.path} was made for {stored}, this build is {self.key}")
        mark = len(log.lines)
        with self.backend.quiet():
            try:
                self._cache = config.create_timing_cache(data)
            except (RuntimeError, TypeError, ValueError):  # TensorRT-RTX logs and returns an empty cache instead
                self._cache = None
            if self._cache is None or not config.set_timing_cache(self._cache, False):
                log.warn(f"timing cache {self.path} could not be read by the builder; starting an empty one")
                self._cache = config.create_timing_cache(b"")
                config.set_timing_cache(self._cache, False)
        if data:
            self.accepted = not any(w.id == "timing-cache-unusable" for w in log.recognized(mark))

    def _stored_key(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, config) -> None:
        with self.backend.quiet():
            data = bytes(config.get_timing_cache().serialize())
        with temporary_file(self.path) as (cache, tmp_cache), temporary_file(self.meta_path) as (key, tmp_key):
            cache.write(data)
            key.write(json.dumps(self.key, indent=1).encode())
            finish(cache)
            finish(key)
            swap_in([(tmp_key, self.meta_path), (tmp_cache, self.path)])  # a cache is never left under another key
        self.bytes_written = len(data)

    def info(self) -> TimingCacheInfo:
        return TimingCacheInfo(str(self.path), self.status, self.accepted, self.bytes_written, self.key)


def _engine_layers(backend: Backend, logger, engine: bytes, log: BuildLog) -> tuple[list[dict], str]:
    """The engine's layers from IEngineInspector (JSON) where the engine loads, else from the builder's log.

    Loading needs a GPU the engine supports: never on a CPU-only machine, and not for TensorRT-RTX on an H100/H200.
    """
    if visible_gpu():
        cuda_engine = backend.trt.Runtime(logger).deserialize_cuda_engine(engine)
        if cuda_engine is not None:
            inspector = cuda_engine.create_engine_inspector()
            info = json.loads(inspector.get_engine_information(backend.trt.LayerInformationFormat.JSON))
            return [layer if isinstance(layer, dict) else {"name": layer} for layer in info.get("Layers", [])], \
                "inspector"
    for line in log.lines:
        if line.text.startswith("Engine Layer Information:"):
            matches = map(ENGINE_LAYER.fullmatch, line.text.splitlines()[1:])
            return [match.groupdict() for match in matches if match], "builder-log"
    return [], "builder-log"
