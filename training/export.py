"""Export a trained model into the model repository (``models/<name>/``).

Every graph goes through ``torch.onnx.export`` (dynamo) into one self-contained file, passes the
full ONNX checker, carries metadata, and is compared with PyTorch eval in onnxruntime on batch sizes
(and sequence lengths) that differ from the export example. The version folder is written to a
temporary folder and renamed into place, so a failed export never leaves a half-written model.
What may be written where (versions, the shared config.json) is training.repository_policy's call.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

from app.core.repository_format import (
    CONFIG_FILE,
    REPORT_FILE,
    GraphSpec,
    ModelConfig,
    Parity,
    Report,
    TensorSpec,
    sha256_of,
)
from training.graphs import GraphExport
from training.repository_policy import check_config, choose_version, config_matches, serving_settings

# torch.onnx's dynamo exporter logs "torchvision is not installed. Skipping torchvision::nms" (and
# roi_align, roi_pool, deform_conv2d) through this logger every time it builds its op registry, i.e.
# on every export: it offers to translate torchvision's detection ops, which no model here uses, and
# torchvision is not a dependency. Drop exactly that notice; the logger's other warnings still show.
_TORCHVISION_NOTICE = re.compile(r"torchvision is not installed\. Skipping torchvision::")


def _not_torchvision_notice(record: logging.LogRecord) -> bool:
    return not _TORCHVISION_NOTICE.match(record.getMessage())


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_not_torchvision_notice)

PARITY_BATCH_SIZES = (1, 7, 32)
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export or its verification failed; the message says which graph and why."""


def _dynamic_shapes(graph: GraphExport) -> tuple[dict[int, torch.export.Dim], ...]:
    """Positional (in input order): dynamo keys a dict by forward()'s argument names, not ours."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for name, tensor in graph.inputs.items():
        axes = {0: "batch", **graph.dynamic_axes.get(name, {})}
        for axis, dim_name in axes.items():
            if tensor.shape[axis] < 2:
                raise ExportError(
                    f"graph {graph.role!r}: example size of dynamic axis {axis} of {name!r} is "
                    f"{tensor.shape[axis]}; dynamo turns sizes < 2 into static dimensions"
                )
            dims.setdefault(dim_name, torch.export.Dim(dim_name))
        shapes.append({axis: dims[dim_name] for axis, dim_name in axes.items()})
    return tuple(shapes)


def tensor_specs(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs read back from the exported graph itself: symbolic dims become -1."""

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    return [spec(v) for v in proto.graph.input], [spec(v) for v in proto.graph.output]


def _as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _random_like(tensor: Tensor, shape: list[int], generator: torch.Generator) -> Tensor:
    if tensor.dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=tensor.dtype)
    high = int(tensor.max().item()) + 1
    return torch.randint(0, max(high, 2), shape, generator=generator, dtype=tensor.dtype)


def _parity(graph: GraphExport, path: Path, batch_sizes: tuple[int, ...]) -> float:
    """max |ORT - PyTorch| over outputs, batch sizes and (for sequence axes) two other lengths."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    # Every symbolic non-batch axis is checked at sizes that differ from the example.
    examples = {
        dim_name: int(tensor.shape[axis])
        for name, tensor in graph.inputs.items()
        for axis, dim_name in graph.dynamic_axes.get(name, {}).items()
        if axis != 0
    }
    choices = [graph.parity_sizes.get(dim, [max(size - 1, 1), size + 3]) for dim, size in examples.items()]
    variants = [dict(zip(examples, combo, strict=True)) for combo in itertools.product(*choices)]
    worst = 0.0
    for batch in batch_sizes:
        for sizes in variants:
            feeds = {}
            for name, tensor in graph.inputs.items():
                shape = list(tensor.shape)
                shape[0] = batch
                for axis, dim_name in graph.dynamic_axes.get(name, {}).items():
                    if axis != 0:
                        shape[axis] = sizes[dim_name]
                feeds[name] = _random_like(tensor, shape, generator)
            with torch.no_grad():
                expected = _as_tuple(graph.module(*feeds.values()))
            got = session.run(graph.output_names, {k: v.numpy() for k, v in feeds.items()})
            for name, want, have in zip(graph.output_names, expected, got, strict=True):
                if tuple(want.shape) != have.shape:
                    raise ExportError(
                        f"graph {graph.role!r} output {name!r}: onnxruntime shape {have.shape} != "
                        f"PyTorch shape {tuple(want.shape)} at batch {batch}"
                    )
                worst = max(worst, float(np.max(np.abs(want.numpy() - have))) if have.size else 0.0)
    return worst


def export_graph(graph: GraphExport, path: Path, metadata: dict[str, str]) -> tuple[list, list]:
    """Export one graph to ``path`` (single file), check it fully and stamp metadata."""
    graph.module.eval()
    args = tuple(graph.inputs.values())
    with torch.no_grad():
        outputs = _as_tuple(graph.module(*args))
    if len(outputs) != len(graph.output_names):
        raise ExportError(
            f"graph {graph.role!r} returns {len(outputs)} tensors but names {len(graph.output_names)} outputs"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if graph.exporter == "torchscript":
            axes = {name: {0: "batch", **graph.dynamic_axes.get(name, {})} for name in graph.inputs}
            torch.onnx.export(
                graph.module,
                args,
                str(path),
                input_names=list(graph.inputs),
                output_names=graph.output_names,
                dynamic_axes=axes,
                dynamo=False,
                opset_version=17,
            )
            proto = onnx.load(str(path))
        else:
            program = torch.onnx.export(
                graph.module,
                args,
                input_names=list(graph.inputs),
                output_names=graph.output_names,
                dynamic_shapes=_dynamic_shapes(graph),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return tensor_specs(proto)


@dataclass
class ExportResult:
    path: Path
    config: ModelConfig
    report: Report


def config_json(config: ModelConfig) -> dict[str, Any]:
    """config.json as the exporter writes it, as a dict: what a new config is compared by."""
    return json.loads(config.model_dump_json(exclude_none=True))


@dataclass
class StagedExport:
    """A finished repository entry (``<name>/config.json`` and ``<name>/<version>/``) in a hidden
    folder of the repository, which the server does not read: checks on the exported graphs run there,
    then :meth:`commit` swaps it into place (same file system, so each swap is one rename) or
    :meth:`discard` drops it."""

    root: Path  # repository/.<name>-XXXX
    model_dir: Path  # repository/<name>: where commit() puts it
    version: int
    config: ModelConfig
    parity: float  # max |ORT - PyTorch| over the graphs
    overwrite: bool

    @property
    def path(self) -> Path:
        """The staged version folder; its parent holds the staged config.json."""
        return self.root / self.model_dir.name / str(self.version)

    def commit(self) -> ExportResult:
        """Swap the version folder, then config.json, into place; the old version (if any) stays whole
        until the new one is complete. The policy is checked again here, as other runs may have
        written since this one started (RepositoryConflict, nothing swapped)."""
        final = self.model_dir / str(choose_version(self.model_dir, self.version, overwrite=self.overwrite))
        check_config(self.model_dir, config_json(self.config), overwrite=self.overwrite)
        # The same config (to rounding) stays as it is: the server's file is only touched for a change.
        keep_config = config_matches(self.model_dir, config_json(self.config))
        staged_config = self.path.parent / CONFIG_FILE
        self.model_dir.mkdir(parents=True, exist_ok=True)
        trash = None
        if final.exists():
            trash = self.model_dir / f".old-{self.version}-{os.getpid()}"
            os.replace(final, trash)
        os.replace(self.path, final)
        if not keep_config:
            os.replace(staged_config, self.model_dir / CONFIG_FILE)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        report = Report.model_validate_json((final / REPORT_FILE).read_text())  # with later metrics
        config = ModelConfig.model_validate_json((self.model_dir / CONFIG_FILE).read_text())
        return ExportResult(path=final, config=config, report=report)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def stage_export(
    graphs: list[GraphExport],
    *,
    repository: Path,
    config_fields: dict,
    report_fields: dict,
    version: int = 1,
    overwrite: bool = False,
    plots: dict[str, Path] | None = None,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
) -> StagedExport:
    """Export, check and write a whole repository entry into a hidden staging folder of ``repository``.

    ``config_fields`` fills :class:`ModelConfig` (without ``graphs``; the serving fields of an existing
    config.json are kept), ``report_fields`` fills :class:`Report` (without parity and sha256).
    ``plots`` (file name -> existing PNG) are copied into the version folder. Raises ExportError when
    parity exceeds ``tolerance``, RepositoryConflict when the entry may not be written (see
    training.repository_policy); then nothing is left behind.
    """
    name = config_fields["name"]
    model_dir = Path(repository) / name
    choose_version(model_dir, version, overwrite=overwrite)  # refuse before the work, not after it
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=model_dir.parent))
    staged = root / name / str(version)
    try:
        staged.mkdir(parents=True)
        metadata = {
            "name": name,
            "description": config_fields.get("description", ""),
            "labels": json.dumps(config_fields.get("labels")),
            "preprocessing": json.dumps(config_fields.get("preprocessing")),
        }
        specs: dict[str, GraphSpec] = {}
        per_graph: dict[str, float] = {}
        for graph in graphs:
            file = f"{graph.role}.onnx"
            inputs, outputs = export_graph(graph, staged / file, {**metadata, "role": graph.role})
            specs[graph.role] = GraphSpec(file=file, inputs=inputs, outputs=outputs)
            per_graph[graph.role] = _parity(graph, staged / file, batch_sizes)
        worst = max(per_graph.values())
        if worst > tolerance:
            raise ExportError(
                f"ONNX parity {worst:.2e} exceeds {tolerance:.0e} (per graph: {per_graph}); not exported"
            )
        config = ModelConfig(**{**config_fields, **serving_settings(model_dir)}, graphs=specs)
        # The full comparison, graphs included, before any further work; commit() checks again.
        check_config(model_dir, config_json(config), overwrite=overwrite)
        for file_name, source in (plots or {}).items():
            shutil.copyfile(source, staged / file_name)
        report = Report(
            **report_fields,
            parity=Parity(max_abs_diff=worst, batch_sizes=list(batch_sizes), per_graph=per_graph),
            sha256={spec.file: sha256_of(staged / spec.file) for spec in specs.values()},
            plots=sorted(plots or {}),
            versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        )
        (staged / REPORT_FILE).write_text(report.model_dump_json(indent=2, by_alias=True) + "\n")
        (staged.parent / CONFIG_FILE).write_text(config.model_dump_json(indent=2, exclude_none=True) + "\n")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return StagedExport(
        root=root, model_dir=model_dir, version=version, config=config, parity=worst, overwrite=overwrite
    )


def stage_graph_files(
    files: dict[str, Path],
    *,
    repository: Path,
    config: ModelConfig,
    report: Report,
    version: int,
    overwrite: bool = False,
) -> StagedExport:
    """Stage a version made of ready graph files (``files``: file name in config.json -> path) beside
    the model's existing config.json, as :func:`stage_export` stages an export: a hidden folder of
    ``repository``, every graph's sha256 written into ``report``, then :meth:`StagedExport.commit`.
    The graphs must fit ``config`` (the model's config.json, which every version shares and which
    commit then leaves as it is). RepositoryConflict when the version may not be written."""
    name = config.name
    model_dir = Path(repository) / name
    choose_version(model_dir, version, overwrite=overwrite)
    declared = {graph.file for graph in config.graphs.values()}
    if set(files) != declared:
        raise ExportError(f"{name}: config.json declares graphs {sorted(declared)}, got {sorted(files)}")
    root = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=model_dir.parent))
    staged = root / name / str(version)
    try:
        staged.mkdir(parents=True)
        for file_name, source in files.items():
            shutil.copyfile(source, staged / file_name)
        report = report.model_copy(update={"sha256": {f: sha256_of(staged / f) for f in sorted(files)}})
        (staged / REPORT_FILE).write_text(report.model_dump_json(indent=2, by_alias=True) + "\n")
        (staged.parent / CONFIG_FILE).write_text(config.model_dump_json(indent=2, exclude_none=True) + "\n")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return StagedExport(
        root=root,
        model_dir=model_dir,
        version=version,
        config=config,
        parity=report.parity.max_abs_diff,
        overwrite=overwrite,
    )


def export_to_repository(graphs: list[GraphExport], **options: Any) -> ExportResult:
    """Write ``repository/<name>/config.json`` and ``repository/<name>/<version>/`` in one step
    (``options`` as :func:`stage_export` takes them). An existing version folder, or a config.json that
    differs, is replaced only with ``overwrite`` (training.repository_policy.RepositoryConflict
    otherwise)."""
    staged = stage_export(graphs, **options)
    try:
        return staged.commit()
    finally:
        staged.discard()
