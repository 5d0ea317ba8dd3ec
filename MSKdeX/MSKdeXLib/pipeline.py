"""What the MSKdeX module does, on MRML nodes, without Qt: the Slicer module's Logic and the
batch script both call this.

Each step reads nodes, converts them through the bridge (:mod:`volume_nodes`,
:mod:`segmentation_nodes`, :mod:`radiograph_nodes`), runs the backend, and writes output
nodes (:mod:`drr_nodes`, :mod:`results_table`, :mod:`pose_nodes`). Errors are raised
(:class:`InputError` naming the node and field); nothing here shows dialogs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from MSKdeXTraining.calibration import min_patients
from MSKdeXTraining.drr import DRRResult, render_drr, view_center
from MSKdeXTraining.errors import InputError
from MSKdeXTraining.imaging.geometry import Geometry, default_ap_pose
from MSKdeXTraining.imaging.projector import project_objects
from MSKdeXTraining.imaging.volume import Volume, check_ct
from MSKdeXTraining.modelio import read_meta
from MSKdeXTraining.objects import ObjectMap, ObjectSpec
from MSKdeXTraining.progress import part, silent
from MSKdeXTraining.qc import check_hu
from MSKdeXTraining.radiograph_formats import stem
from MSKdeXTraining.radiograph_io import Radiograph, check_magnification, read_radiograph, set_magnification
from MSKdeXTraining.sidecar import fits, source_sidecar
from MSKdeXTraining.training.config import load_config
from MSKdeXTraining.training.data import patient_of, read_manifest, split_folds
from MSKdeXTraining.training.distributed import pick_device

from .backend_process import BackendProcess, backend_command
from .coordinates import check_untransformed
from .drr_nodes import drr_layers, place_over
from .layer_names import DRR_PREFIX, layer_name
from .progress import ProgressRelay
from .radiograph_nodes import radiograph_from_node, radiograph_to_node
from .results_table import results_chart, results_table
from .segmentation_nodes import labels_from_segmentation, name_values, unmatched_segments
from .volume_nodes import volume_from_node

if TYPE_CHECKING:
    from slicer import (vtkMRMLLinearTransformNode, vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLScene,
                        vtkMRMLSegmentationNode, vtkMRMLTableNode)

    from MSKdeXTraining.imaging.registration import RegistrationResult
    from MSKdeXTraining.inference import Decomposition
    from MSKdeXTraining.qc import SegmentationQC

#: Names of the output nodes (a re-run updates the same nodes; DRR layers: layer_names.DRR_PREFIX).
RESULT_PREFIX = "MSKdeX"
TABLE_NAME = "MSKdeX results"
CHART_NAME = "MSKdeX results chart"
QC_TABLE_NAME = "MSKdeX segmentation QC"
#: Pose-node attribute: the node IDs and SDD/SOD (mm, those used) a pose was registered from (JSON).
INPUTS_ATTRIBUTE = "MSKdeX.RegistrationInputs"
#: Training with the hold-out for calibration trains on fold 0 of this many (its quarter calibrates).
HOLD_OUT_FOLDS = 4


@dataclass
class DecomposeOutput:
    """A decomposition and the nodes showing it."""

    decomposition: Decomposition
    layers: dict[tuple[str, str], vtkMRMLScalarVolumeNode]  # (object, DRR type) -> layer
    table: vtkMRMLTableNode
    chart: vtkMRMLPlotChartNode


def drr_warnings(metrics: dict) -> list[str]:
    """What makes layers of :meth:`Pipeline.compute_drrs` empty or doubtful, from its metrics:
    objects absent from the segmentation (all-zero layers), 3D volumes outside the plausible
    range, objects partly outside the detector; with absent objects, also the segments matched
    to no object (left out: perhaps those objects under other names; otherwise they are just
    the segmentation's other structures, e.g. TotalSegmentator's organs, and not listed)."""
    implausible = [f"{r['name']} ({r['implausible_volume']})" for r in metrics["objects"] if r["implausible_volume"]]
    unmatched = metrics["unmatched_segments"] if metrics["absent"] else []
    found = [(metrics["absent"], "object(s) absent from the segmentation (their layers are zero)"),
             (implausible, "object(s) with an implausible volume"),
             (metrics["outside_fov"], "object(s) partly outside the detector (enlarge it or its pixel spacing)"),
             (unmatched, f"segment(s) matched to no object of the map {metrics['object_map']!r} "
                         "(left out; name them after its objects)")]
    return [f"{len(items)} {what}: {_listed(items)}" for items, what in found if items]


def registered_on(recorded: str | None, inputs: dict) -> bool:
    """Whether a pose node's :data:`INPUTS_ATTRIBUTE` (``recorded``, JSON) names the same CT,
    segmentation and radiograph node IDs as ``inputs`` and SDD / SOD within 0.01 mm (a distance
    computed from the file's magnification may differ from a typed one in its last bits)."""
    try:
        old = json.loads(recorded or "")
    except ValueError:
        return False
    if not isinstance(old, dict) or any(old.get(k) != inputs[k] for k in ("ct", "segmentation", "radiograph")):
        return False
    return all(isinstance(old.get(k), (int, float)) and abs(old[k] - inputs[k]) <= 0.01 for k in ("sdd", "sod"))


def _listed(names: list[str], most: int = 10) -> str:
    """``names`` joined, the first ``most`` only (a full TotalSegmentator segmentation has ~100)."""
    rest = len(names) - most
    return ", ".join(names[:most]) + (f" and {rest} more" if rest > 0 else "")


class Pipeline:
    """The MSKdeX steps on the nodes of one MRML ``scene``."""

    def __init__(self, scene: vtkMRMLScene):
        self.scene = scene  #: where the steps read their input nodes and write their output nodes

    # -- inputs -------------------------------------------------------------------------
    def load_radiograph(self, path: str | Path, pixel_spacing: float | tuple[float, float] | None = None,
                        magnification: float | None = None, *,
                        spacing_option: str = "--pixel-spacing",
                        magnification_option: str | None = "--magnification") -> vtkMRMLScalarVolumeNode:
        """A new radiograph node (named after the file) read by the backend reader
        (:func:`~MSKdeXTraining.radiograph_io.read_radiograph`), keeping its source record:
        magnification, pixel padding, bit depth and colour count as for the file itself; and
        the geometry of its ``mskdex-xray`` sidecar, if any, for :meth:`registration_geometry`.
        ``pixel_spacing`` (row, column mm, or one value for both) and ``magnification`` (SDD /
        SOD) override the file's; errors and notes name ``spacing_option`` and
        ``magnification_option`` as where to give them."""
        if not str(path).strip() or Path(path) == Path("."):
            raise InputError("radiograph file: choose a file to load (DICOM DX/CR, NIfTI/NRRD/MHA, "
                             "PNG/JPEG/TIFF/BMP)")
        path = Path(path)
        radiograph = read_radiograph(path, pixel_spacing, magnification, spacing_option=spacing_option,
                                     magnification_option=magnification_option)
        if magnification is not None:  # kept by the node: Decompose uses it unless given another
            radiograph.source["magnification_field"] = "given in MSKdeX (Magnification) when loaded"
        return radiograph_to_node(radiograph, self.scene, self.scene.GenerateUniqueName(stem(path)))

    def inputs(self, ct_node: vtkMRMLScalarVolumeNode, segmentation_node: vtkMRMLSegmentationNode,
               objects: ObjectMap) -> tuple[Volume, Volume]:
        """(CT in HU, label map on the CT grid) from the nodes; segments are matched to label
        values by their object-map names (see :func:`label_names`) or their MSKdeX tag;
        other segments are ignored. A CT under a transform is refused (:func:`check_untransformed`)."""
        check_untransformed(ct_node, "CT volume")
        ct = check_ct(volume_from_node(ct_node, "CT"), f"CT volume {ct_node.GetName()!r}")
        labels = labels_from_segmentation(segmentation_node, ct_node, name_values(objects), skip_unknown=True)
        check_hu(ct, labels, objects, f"CT volume {ct_node.GetName()!r}")
        return ct, labels

    def segmentation_qc(self, ct_node: vtkMRMLScalarVolumeNode, segmentation_node: vtkMRMLSegmentationNode,
                        objects: ObjectMap, progress: ProgressRelay | None = None
                        ) -> tuple[SegmentationQC, vtkMRMLTableNode]:
        """Backend segmentation QC of the selected segmentation; returns (qc, table node)."""
        from MSKdeXTraining.qc import segmentation_qc

        from .qc_table import qc_table

        report = progress or silent
        report(0.0, "exporting the segmentation")
        ct, labels = self.inputs(ct_node, segmentation_node, objects)
        report(0.5, "checking each object")
        qc = segmentation_qc(labels, objects, ct=ct, progress=part(report, 0.5, 0.45))
        report(1.0, "writing the QC table")
        table = qc_table(qc, self.scene, QC_TABLE_NAME, self.scene.GetFirstNodeByName(QC_TABLE_NAME))
        return qc, table

    # -- DRRs ---------------------------------------------------------------------------
    @staticmethod
    def reference_pose(labels: Volume, objects: ObjectMap, geometry: Geometry) -> np.ndarray:
        """Default AP pose centred on the objects (:func:`~MSKdeXTraining.drr.view_center`), as
        ``mskdex drr`` renders it (docs/formats.md)."""
        return default_ap_pose(view_center(labels, objects), geometry)

    def compute_drrs(self, ct_node: vtkMRMLScalarVolumeNode, segmentation_node: vtkMRMLSegmentationNode,
                     objects: ObjectMap, geometry: Geometry, reference_node: vtkMRMLScalarVolumeNode | None = None,
                     progress: ProgressRelay | None = None
                     ) -> tuple[DRRResult, dict[tuple[str, str], vtkMRMLScalarVolumeNode]]:
        """Object-wise DRRs of the CT in the default AP pose (:meth:`reference_pose`) as layers;
        returns (result with the stack and its metrics (DRR sums vs 3D volume/mass, and
        ``unmatched_segments``: segments left out; :func:`drr_warnings` sums them up), layers)."""
        ct, labels = self.inputs(ct_node, segmentation_node, objects)
        result = render_drr(ct, labels, objects, geometry, self.reference_pose(labels, objects, geometry),
                            device=pick_device("auto"), source=f"segmentation {segmentation_node.GetName()!r}",
                            progress=progress)
        result.metrics["unmatched_segments"] = unmatched_segments(segmentation_node, name_values(objects))
        layers = drr_layers(result.stack.data.numpy(), result.stack.names, geometry.pixel_spacing, self.scene,
                            DRR_PREFIX, reference_node)
        return result, layers

    def drr_layer(self, name: str, drr_type: str,
                  over: vtkMRMLScalarVolumeNode | None = None) -> vtkMRMLScalarVolumeNode | None:
        """The layer of object ``name`` and ``drr_type`` of the last :meth:`compute_drrs`, if any;
        with ``over`` (a radiograph node) placed in its plane, centred on it, to be shown over it
        (whichever radiograph, if any, the layers were computed with)."""
        layer = self.scene.GetFirstNodeByName(layer_name(DRR_PREFIX, name, drr_type))
        if layer is not None and over is not None and over.GetImageData() is not None:
            place_over(layer, over)
        return layer

    # -- bone alignment -----------------------------------------------------------------
    @staticmethod
    def registration_geometry(radiograph_node: vtkMRMLScalarVolumeNode, sdd: float | None = None,
                              sod: float | None = None) -> tuple[Geometry, str | None]:
        """(detector geometry, note when the distances were assumed) of the radiograph node as
        ``mskdex register`` reads its file
        (:func:`~MSKdeXTraining.imaging.registration.read_xray`). A file with an ``mskdex-xray``
        sidecar (a cohort radiograph), while the node keeps the sidecar's pixels: the sidecar's
        geometry exactly, parallel beam included, ``sdd`` / ``sod`` (mm) replacing its own when
        given (:func:`~MSKdeXTraining.imaging.registration.sidecar_film_geometry`). Any
        other (:func:`~MSKdeXTraining.imaging.registration.radiograph_geometry`): ``sdd`` /
        ``sod`` if given, else the file's (kept by *Load radiograph*), else SDD 1100 / SOD 880
        assumed; a spacing calibrated at the patient is scaled to the detector; parallel when a
        sidecar says so."""
        return Pipeline._registration_film(radiograph_node, sdd, sod)[1:]

    @staticmethod
    def _registration_film(radiograph_node: vtkMRMLScalarVolumeNode, sdd: float | None,
                           sod: float | None) -> tuple[Radiograph, Geometry, str | None]:
        """The radiograph of the node with its :meth:`registration_geometry`."""
        from MSKdeXTraining.imaging.registration import radiograph_geometry, sidecar_film_geometry

        radiograph = radiograph_from_node(radiograph_node)
        where = f"radiograph {radiograph_node.GetName()!r}"
        sidecar = source_sidecar(radiograph.source, where)
        # exact while the node keeps the sidecar's pixels: no distance assumed
        if sidecar is not None and fits(sidecar, radiograph.shape, radiograph.pixel_spacing):
            return radiograph, sidecar_film_geometry(sidecar, where, sdd, sod), None
        with warnings.catch_warnings(record=True) as assumed:  # its only warning: distances assumed
            warnings.simplefilter("always")
            geometry = radiograph_geometry(radiograph, where, sdd, sod,
                                           parallel=sidecar is not None and sidecar.parallel)
        return radiograph, geometry, "; ".join(str(w.message) for w in assumed) or None

    @staticmethod
    def registration_distances(transform_node: vtkMRMLLinearTransformNode) -> str:
        """The SDD / SOD a pose node was registered with (:data:`INPUTS_ATTRIBUTE`), as text."""
        inputs = json.loads(transform_node.GetAttribute(INPUTS_ATTRIBUTE) or "{}")
        if "sdd" not in inputs:
            return "SDD/SOD unknown"
        text = f"SDD {inputs['sdd']:.1f} mm, SOD {inputs['sod']:.1f} mm"
        return text + (" (assumed: not in the file nor given)" if inputs.get("assumed") else "")

    def register(self, ct_node: vtkMRMLScalarVolumeNode, segmentation_node: vtkMRMLSegmentationNode,
                 radiograph_node: vtkMRMLScalarVolumeNode, objects: ObjectMap, body: str,
                 sdd: float | None = None, sod: float | None = None, preset: str = "accurate",
                 progress: ProgressRelay | None = None, start_pose: np.ndarray | None = None
                 ) -> tuple[RegistrationResult, vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode]:
        """Register one rigid body (``pelvis``, ``femur_left``, ``femur_right``) to the
        radiograph as ``mskdex register`` does
        (:func:`~MSKdeXTraining.imaging.registration.register_body`) in its
        :meth:`registration_geometry` (``sdd`` / ``sod`` mm, ``None``: the file's); returns
        (result, transform node, aligned bone DRR layer). The transform node records the
        inputs and the distances used (:data:`INPUTS_ATTRIBUTE`; :meth:`registration_distances`).

        ``start_pose`` (4x4 world -> camera) starts the search elsewhere than the AP view, e.g.
        from the transform node after the user moved it (Redo). Without it a femur starts from
        the pelvis's pose node when one was registered from the same CT, segmentation,
        radiograph and SDD/SOD (:func:`registered_on`) and accepted (:func:`accept_pose`;
        not accepted: InputError), and from the AP view when there is none."""
        from MSKdeXTraining.imaging.registration import RegistrationSettings, register_body, rigid_body
        from MSKdeXTraining.imaging.registration.settings import FINEST_PIXEL_MM, binned

        from .pose_nodes import (ALIGNED_PREFIX, is_accepted, pose_from_transform_node, pose_node_name,
                                 pose_to_transform_node)

        values = rigid_body(objects, body)
        ct, labels = self.inputs(ct_node, segmentation_node, objects)
        radiograph, geometry, assumed = self._registration_film(radiograph_node, sdd, sod)
        inputs = {"ct": ct_node.GetID(), "segmentation": segmentation_node.GetID(),
                  "radiograph": radiograph_node.GetID(), "sdd": geometry.sdd, "sod": geometry.sod,
                  "assumed": assumed is not None}
        pelvis_node = self.scene.GetFirstNodeByName(pose_node_name("pelvis"))
        from_pelvis = (start_pose is None and body != "pelvis" and pelvis_node is not None
                       and registered_on(pelvis_node.GetAttribute(INPUTS_ATTRIBUTE), inputs))
        if from_pelvis and not is_accepted(pelvis_node):
            raise InputError(f"{body}: a femur starts from the pelvis registered on these inputs, whose pose "
                             f"({pelvis_node.GetName()!r}) is not accepted; register the pelvis (or Redo it), "
                             "check its overlay and click Accept first")
        pelvis_pose = pose_from_transform_node(pelvis_node) if from_pelvis else None
        result = register_body(ct, labels, objects, body, radiograph.array, geometry, start_pose, pelvis_pose,
                               RegistrationSettings.preset(preset), progress,
                               source=f"segmentation {segmentation_node.GetName()!r}")
        reference = self.reference_pose(labels, objects, geometry)
        transform = pose_to_transform_node(result.pose, reference, self.scene, pose_node_name(body),
                                           gc=result.gc)
        transform.SetAttribute(INPUTS_ATTRIBUTE, json.dumps(inputs))  # a femur reuses only a pelvis of these
        bone = ObjectMap(body, (ObjectSpec(body, "bone", values),), "ignore")
        shown = binned(geometry, FINEST_PIXEL_MM)  # the resolution registration saw (a fine film: ~1 mm)
        drr = project_objects(ct, labels, bone, shown, result.pose, device=pick_device("auto"))
        layer = drr_layers(drr.data.numpy(), bone.names, shown.pixel_spacing, self.scene,
                           ALIGNED_PREFIX, radiograph_node, prune=False)[(body, "wvdrr")]  # the other bones' stay
        return result, transform, layer

    # -- training -----------------------------------------------------------------------
    @staticmethod
    def training_process(dataset: Path, config: str, out: Path, resume: bool = False,
                         hold_out: bool = True) -> BackendProcess:
        """Start ``mskdex train`` in a child process (see :class:`BackendProcess`). ``hold_out``
        trains on fold 0 of 4 (``--fold 0/4``): the held-out quarter of the patients calibrates
        the model's prediction intervals (refused when that fold holds fewer patients with usable
        cases than :func:`~MSKdeXTraining.calibration.min_patients`); otherwise it trains on every
        patient and has none."""
        if not (Path(dataset) / "manifest.json").is_file():
            raise InputError(f"dataset folder {dataset}: no manifest.json; expected a folder written by "
                             "`mskdex prepare` (dataset layout v2, see docs/formats.md)")
        if not str(out).strip() or Path(out) == Path("."):
            raise InputError("training output folder: choose a folder for the model run")
        if hold_out:
            manifest, seed = read_manifest(dataset), load_config(config).fold_seed
            try:  # the trainer's own split (`mskdex train --fold 0/4`)
                held = split_folds(manifest, HOLD_OUT_FOLDS, seed=seed)[0][1]
            except InputError as e:  # fewer usable patients than folds
                raise InputError(f"dataset folder {dataset}: the hold-out cannot split it ({e}). Untick the "
                                 "hold-out to train on every patient (the model then reports no interval)") from None
            patient = patient_of(manifest)
            patients = len({patient[i] for i in held})
            if patients < min_patients():
                raise InputError(f"dataset folder {dataset}: the hold-out (fold 0 of {HOLD_OUT_FOLDS}) holds "
                                 f"{patients} patient(s) with usable cases; calibrating the intervals needs at "
                                 f"least {min_patients()}. Untick the hold-out to train on every patient (the model "
                                 "then reports no interval)")
        arguments = ["--data", str(dataset), "--config", config, "--out", str(out)]
        arguments += (["--fold", f"0/{HOLD_OUT_FOLDS}"] if hold_out else []) + (["--resume"] if resume else [])
        return BackendProcess(backend_command("train", arguments))

    # -- decompose ----------------------------------------------------------------------
    def decompose(self, model: Path, radiograph_node: vtkMRMLScalarVolumeNode, tta: int = 8, seed: int = 0,
                  progress: ProgressRelay | None = None, magnification: float | None = None,
                  table_node: vtkMRMLTableNode | None = None) -> DecomposeOutput:
        """Decompose the radiograph with the model run folder ``model``: one layer per object
        and DRR type, the results table (one row per object, units; written into ``table_node``,
        else the table :data:`TABLE_NAME`) and its bar chart.

        ``magnification`` (SDD / SOD at the patient, in :data:`~MSKdeXTraining.radiograph_io.MAGNIFICATION_RANGE`) replaces
        the file's; without either, the model's reference is assumed and the result notes it."""
        from MSKdeXTraining.inference import Decomposer

        if not str(model).strip() or Path(model) == Path("."):
            raise InputError("model folder: choose the run folder of a trained model (mskdex train)")
        model = Path(model)
        read_meta(model)  # before any work: a folder that is no model run is refused, naming any runs in it
        radiograph = radiograph_from_node(radiograph_node)
        if magnification is not None:
            check_magnification(magnification, "MSKdeX panel field 'Magnification'",
                                "or choose 'from the file'")
            set_magnification(radiograph.source, magnification, "given in MSKdeX (Magnification)")
        report = progress or silent
        report(0.0, "loading the model")
        decomposer = Decomposer.from_run(model)
        # the decomposition's own steps fill 90 % of the bar, the layers and table the rest
        result = decomposer.decompose(radiograph, tta=tta, seed=seed,
                                      progress=lambda f, m: report(0.9 * f, "decomposed" if f == 1.0 else m))
        report(0.9, "adding the layers and the results table")
        layers = drr_layers(result.drr, result.names, result.geometry.pixel_spacing, self.scene,
                            RESULT_PREFIX, radiograph_node)
        if table_node is None:
            table_node = self.scene.GetFirstNodeByName(TABLE_NAME)
        table = results_table(result.table, self.scene, TABLE_NAME, table_node)
        table.SetAttribute("MSKdeX.OOD", "1" if result.ood.flag else "0")
        table.SetAttribute("MSKdeX.OODReasons", "; ".join(result.ood.reasons))
        table.SetAttribute("MSKdeX.Model", str(model.resolve()))
        calibration = result.model["calibration"]  # the interval columns' level, or none
        table.SetAttribute("MSKdeX.IntervalLevel", "" if calibration is None else str(calibration["level"]))
        chart = results_chart(table, self.scene, CHART_NAME, node=self.scene.GetFirstNodeByName(CHART_NAME))
        report(1.0, "done")
        return DecomposeOutput(result, layers, table, chart)
