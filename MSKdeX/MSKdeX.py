"""MSKdeX 3D Slicer module: per-muscle lean mass (g) and volume (cm3) from one hip radiograph.

Thin shell: the module descriptor, the parameter node, the widget (built from
Resources/UI/MSKdeX.ui and bound with connectGui), a thin Logic and the self-test. The work
is done by MSKdeXLib (MRML <-> backend bridge, no Qt) and the backend package MSKdeXTraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import qt
import slicer
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MSKdeXLib.dependencies import ensure_requirements, ensure_torch, require_dependencies, require_python

require_python()  # a clear error on an old Slicer's Python, before the backend fails obscurely

# Only modules that load without torch: the module must load before "Check dependencies" ran.
from MSKdeXTraining.drr_types import DRR_TYPES  # noqa: E402
from MSKdeXTraining.objects import RIGID_BODIES, builtin_maps, load_object_map  # noqa: E402

from MSKdeXLib.backend_process import LOG_LINES  # noqa: E402
from MSKdeXLib.layer_names import drr_objects  # noqa: E402
from MSKdeXLib.layouts import register_layouts, show_film_layout  # noqa: E402
from MSKdeXLib.pose_nodes import accept_pose, pose_from_transform_node, pose_node_name  # noqa: E402
from MSKdeXLib.progress import PERCENT_FORMAT, Cancelled, ProgressRelay, bar_format  # noqa: E402
from MSKdeXLib.results_table import ood_text  # noqa: E402
from MSKdeXLib.sample_data import example_ct_source  # noqa: E402

if TYPE_CHECKING:
    from MSKdeXTraining.imaging.registration import RegistrationResult
    from MSKdeXLib.backend_process import BackendProcess
    from MSKdeXLib.pipeline import DecomposeOutput, Pipeline

QC_COLOURS = {"failed": (255, 170, 170), "warning": (255, 235, 160)}  # row backgrounds (RGB)
TRAIN_LOG_TAIL = 40  # log lines shown with a failed training's error


class MSKdeX(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MSKdeX")
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["MSKdeX developers"]
        self.parent.helpText = _(
            "Estimates per-muscle lean muscle mass (g) and volume (cm3) from one hip radiograph by "
            "decomposing it into object-wise DRRs. Sections: <b>Inputs</b> (CT, segmentation, radiograph: "
            "<i>Load radiograph</i> keeps its file's magnification, padding and bit depth; segmentation QC), "
            "<b>DRRs</b>, <b>Bone alignment</b> (2D/3D registration), <b>Training</b> "
            "(runs the backend in a separate process) and <b>Decompose</b>. "
            "See <a href='https://github.com/mskdex/MSKdeX/blob/main/docs/slicer.md'>the documentation</a>.")
        self.parent.acknowledgementText = _(
            "Method: Gu Y, Otake Y, Uemura K, Takao M, Soufi M, Hiasa Y, Talbot H, Okata S, "
            "Sugano N, Sato Y. MSKdeX: Musculoskeletal (MSK) decomposition from an X-ray image for "
            "fine-grained estimation of lean muscle mass and muscle volume. MICCAI 2023 "
            "(arXiv:2305.19920). Sample data: TotalSegmentator test files (Apache-2.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)
        # before any scene is loaded: a scene saved with MSKdeX's results layout shown reopens with it
        slicer.app.connect("startupCompleted()", lambda: register_layouts(slicer.mrmlScene))


def registerSampleData() -> None:
    """Register the TotalSegmentator example CT and its segmentation (Apache-2.0) as sample data."""
    import SampleData

    icon = str(Path(__file__).parent / "Resources" / "Icons" / "MSKdeX.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(**example_ct_source(icon))


@parameterNodeWrapper
class MSKdeXParameterNode:
    """Everything the GUI edits; the buttons read only this (one source of truth)."""

    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    radiograph: vtkMRMLScalarVolumeNode
    radiographFile: Path  # what Load radiograph reads
    radiographFileSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0  # mm at the detector; 0: the file's
    objectMap: str = "totalsegmentator"
    detectorSize: Annotated[int, WithinRange(32, 1024)] = 256
    pixelSpacing: Annotated[float, WithinRange(0.1, 10.0)] = 1.6  # mm at the detector
    sourceDetectorDistance: Annotated[float, WithinRange(100.0, 3000.0)] = 1100.0  # mm, of the DRRs
    sourceIsocenterDistance: Annotated[float, WithinRange(50.0, 2900.0)] = 880.0  # mm, of the DRRs
    drrType: Annotated[str, Choice(list(DRR_TYPES))] = "vdrr"
    bone: Annotated[str, Choice(list(RIGID_BODIES))] = "pelvis"
    registrationPreset: Annotated[str, Choice(["accurate", "fast"])] = "accurate"
    registrationSDD: Annotated[float, WithinRange(0.0, 3000.0)] = 0.0  # mm; 0: the radiograph file's
    registrationSOD: Annotated[float, WithinRange(0.0, 2900.0)] = 0.0  # mm; 0: the radiograph file's
    datasetFolder: Path
    trainConfig: str = "small"
    trainOutput: Path
    resumeTraining: bool = False
    holdOutForCalibration: bool = True  # train --fold 0/4: the held-out quarter calibrates the intervals
    modelFolder: Path
    tta: Annotated[int, WithinRange(1, 32)] = 8
    radiographMagnification: Annotated[float, WithinRange(0.0, 2.0)] = 0.0  # SDD / SOD; 0: the file's
    resultsTable: vtkMRMLTableNode


class MSKdeXWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: MSKdeXLogic | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._relay: ProgressRelay | None = None
        self._registeredBone: str | None = None  # what Accept accepts
        self._training: BackendProcess | None = None
        self._trainingOutput: Path | None = None  # becomes the model folder when training ends well
        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self.onTrainingPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MSKdeX.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MSKdeXLogic()
        self.ui.objectMapLineEdit.toolTip = f"Built-in object map ({', '.join(builtin_maps())}) or a JSON file"
        self.ui.trainLogTextEdit.maximumBlockCount = LOG_LINES
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.dependenciesButton.connect("clicked(bool)", self.onDependencies)
        self.ui.loadRadiographButton.connect("clicked(bool)", self.onLoadRadiograph)
        self.ui.qcButton.connect("clicked(bool)", self.onSegmentationQC)
        self.ui.drrButton.connect("clicked(bool)", self.onComputeDRRs)
        # deferred, so that connectGui has stored the new DRR type in the parameter node first;
        # the type box on user picks only ("activated"): connectGui refills it on every enter()
        showDRR = lambda _i: qt.QTimer.singleShot(0, self.onShowDRR)
        self.ui.drrObjectComboBox.connect("currentIndexChanged(int)", showDRR)
        self.ui.drrTypeComboBox.connect("activated(int)", showDRR)
        self.ui.registerButton.connect("clicked(bool)", lambda: self.onRegister(redo=False))
        self.ui.redoButton.connect("clicked(bool)", lambda: self.onRegister(redo=True))
        self.ui.acceptPoseButton.connect("clicked(bool)", self.onAcceptPose)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelTrainButton.connect("clicked(bool)", self.onCancelTraining)
        self.ui.decomposeButton.connect("clicked(bool)", self.onDecompose)
        self.ui.cancelWorkButton.connect("clicked(bool)", self.onCancelWork)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancelWork()  # in-process work stops at its next progress report
        self.removeObservers()
        self._timer.stop()
        if self._training is not None:
            self._training.cancel()
        self._training = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        """Stop in-process work, forget this scene's results; a running training no longer sets the model."""
        self.onCancelWork()
        self.setParameterNode(None)
        self._registeredBone = self._trainingOutput = None
        self.ui.drrObjectComboBox.clear()
        self.ui.qcTableWidget.setRowCount(0)
        self.ui.qcTableWidget.setColumnCount(0)
        self.ui.gcLabel.text, self.ui.oodLabel.text, self.ui.statusLabel.text = "not registered", "-", ""
        self.ui.workProgressBar.value = 0
        self.ui.acceptPoseButton.enabled = False

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """The scene's parameter node, and its DRR layers' objects offered (a saved scene's too)."""
        self.setParameterNode(self.logic.getParameterNode())
        self._listDRRObjects(self.logic.drrObjects())

    def setParameterNode(self, inputParameterNode: MSKdeXParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # -- in-process steps: progress bar, Cancel button, errors shown -----------------------
    def _runWork(self, what: str, work) -> None:
        """Run ``work(progress)``; the progress callback updates the bar, processes GUI events
        (so Cancel works) and raises Cancelled at its next call once Cancel is clicked (no error
        shown then). A step clicked while another runs (through those events) is ignored. What
        ``work`` returns (a summary, or None) ends the status line."""
        def report(fraction: float, text: str) -> None:
            self.ui.workProgressBar.value = int(100 * fraction)
            self.ui.statusLabel.text = text
            slicer.app.processEvents()

        if self._relay is not None:
            return
        self._relay = relay = ProgressRelay(report)
        self.ui.cancelWorkButton.enabled = True
        outcome = "failed"
        try:
            with slicer.util.tryWithErrorDisplay(_("{what} failed.").format(what=what), waitCursor=True):
                try:
                    report(0.0, f"{what}...")
                    summary = work(relay)
                    outcome = f"done, {summary}" if summary else "done"
                except Cancelled:
                    outcome = "stopped"
        finally:
            self._relay = None
            self.ui.cancelWorkButton.enabled = False
            self.ui.statusLabel.text = f"{what}: {outcome}."

    def onCancelWork(self) -> None:
        if self._relay is not None:
            self._relay.cancel()

    # -- buttons (those of short steps do nothing while a _runWork step runs) -------------
    def onDependencies(self) -> None:
        if self._relay is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("MSKdeX dependencies are missing.")):  # no wait cursor: it asks
            ensure_torch()  # the PyTorch extension asks before installing
            installed = ensure_requirements(
                lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="MSKdeX"))
            self.ui.statusLabel.text = ("Installed: " + ", ".join(installed)) if installed else "All dependencies present."

    def onLoadRadiograph(self) -> None:
        """Read the radiograph file with MSKdeX's reader, select and show it."""
        if self._relay is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the radiograph failed."), waitCursor=True):
            p = self._parameterNode
            node = self.logic.loadRadiograph(p.radiographFile, p.radiographFileSpacing or None,
                                             p.radiographMagnification or None)
            p.radiograph = node
            self._showFilm(node, results=False)  # a new film: no earlier results beside it
            self.ui.statusLabel.text = f"Radiograph {node.GetName()!r} loaded."

    def onSegmentationQC(self) -> None:
        def work(progress: ProgressRelay) -> str:
            rows = self.logic.segmentationQC(self._parameterNode, progress)
            table = self.ui.qcTableWidget
            columns = list(rows[0]) if rows else []
            table.clear()
            table.setColumnCount(len(columns))
            table.setRowCount(len(rows))
            table.setHorizontalHeaderLabels(columns)
            for r, row in enumerate(rows):
                for c, key in enumerate(columns):
                    item = qt.QTableWidgetItem(str(row[key]))
                    if row["status"] != "ok":
                        item.setBackground(qt.QBrush(qt.QColor(*QC_COLOURS[row["status"]])))
                    table.setItem(r, c, item)
            failed = [row["object"] for row in rows if row["status"] == "failed"]
            return f"{len(failed)} object(s) failed: {', '.join(failed)}" if failed else "all objects passed"

        self._runWork("Segmentation QC", work)

    def onComputeDRRs(self) -> None:
        def work(progress: ProgressRelay) -> str:
            names, warnings = self.logic.computeDRRs(self._parameterNode, progress)
            self._listDRRObjects(names)
            self._showDRR()
            if warnings:
                slicer.util.warningDisplay("\n".join(warnings), windowTitle=_("MSKdeX DRRs"))
            return "; ".join(warnings) or f"all {len(names)} objects present, volumes plausible"

        self._runWork("Computing DRRs", work)

    def _listDRRObjects(self, names: list[str]) -> None:
        """Offer ``names`` in the DRR object box, keeping the object picked if it is among them
        (silently: showing a layer is the caller's choice)."""
        box = self.ui.drrObjectComboBox
        if [box.itemText(i) for i in range(box.count)] == names:
            return
        picked = box.currentText
        box.blockSignals(True)
        try:
            box.clear()
            box.addItems(names)
            box.setCurrentIndex(names.index(picked) if picked in names else 0)
        finally:
            box.blockSignals(False)

    def onShowDRR(self, *_args) -> None:
        """Show the DRR layer picked in the object and type boxes (not while a step runs: its
        progress reports let the boxes' signals through)."""
        if self._relay is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Showing the DRR failed.")):
            self._showDRR()

    def _showDRR(self) -> None:
        """Show the DRR layer picked in the object and type boxes over the radiograph if any,
        placed like it; errors go to the caller (no dialog of its own inside a step's)."""
        p = self._parameterNode
        name = self.ui.drrObjectComboBox.currentText
        layer = self.logic.drrLayer(name, p.drrType, p.radiograph) if p and name else None
        if layer is None:
            return
        if p.radiograph is not None:
            self._showFilm(p.radiograph, layer, opacity=0.6)
        else:
            self._showFilm(layer)

    def onRegister(self, redo: bool = False) -> None:
        """Register the bone (Redo: from its pose node, maybe moved by hand); show DRR overlay and GC."""
        def work(progress: ProgressRelay) -> None:
            self._registeredBone, self.ui.acceptPoseButton.enabled = None, False
            # what logic.register reads (the panel stays editable while it runs)
            bone, radiograph = self._parameterNode.bone, self._parameterNode.radiograph
            result, layer, distances = self.logic.register(self._parameterNode, progress, redo)
            self.ui.gcLabel.text = (f"{bone}: GC {result.gc:.3f} ({'ok' if result.ok else 'below threshold'}); "
                                    f"{distances}")
            self._showFilm(radiograph, layer)
            self._registeredBone, self.ui.acceptPoseButton.enabled = bone, True

        self._runWork(f"Registering {self._parameterNode.bone}", work)

    def onAcceptPose(self) -> None:
        """Accept the pose of the bone registered last (not of the one selected now)."""
        if self._relay is not None or self._registeredBone is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Accepting the pose failed.")):
            self.logic.acceptPose(self._registeredBone)
            self.ui.gcLabel.text += " - accepted"
            self.ui.acceptPoseButton.enabled = False

    def onTrain(self) -> None:
        if self._relay is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Training could not start.")):
            self._training = self.logic.startTraining(self._parameterNode)
            self._trainingOutput = self._parameterNode.trainOutput
            self.ui.trainProgressBar.value = 0
            self.ui.trainProgressBar.setFormat(PERCENT_FORMAT)  # not the last training's text
            self.ui.trainLogTextEdit.clear()
            self.ui.trainLogTextEdit.appendPlainText(" ".join(self._training.command))
            self.ui.trainButton.enabled = False
            self.ui.cancelTrainButton.enabled = True
            self._timer.start()

    def onTrainingPoll(self) -> None:
        if self._training is None:
            return
        for event in self._training.poll():
            if event.kind == "log":
                self.ui.trainLogTextEdit.appendPlainText(event.text)
            elif event.kind == "progress":
                self.ui.trainProgressBar.value = int(100 * event.fraction)
                self.ui.trainProgressBar.setFormat(bar_format(event.text))
            else:
                cancelled, failed = event.cancelled, event.returncode != 0 and not event.cancelled
                state = ("cancelled" if cancelled else f"failed with exit code {event.returncode}" if failed
                         else "finished")
                self.ui.trainLogTextEdit.appendPlainText(f"Training {state}.")
                self.ui.statusLabel.text = f"Training {state}."
                tail = "\n".join(list(self._training.log)[-TRAIN_LOG_TAIL:])
                self._timer.stop()
                self._training = None
                self.ui.trainButton.enabled = True
                self.ui.cancelTrainButton.enabled = False
                if not cancelled and not failed and self._parameterNode and self._trainingOutput:
                    self._parameterNode.modelFolder = self._trainingOutput
                if failed:
                    slicer.util.errorDisplay(_("Training failed (exit code {code}); the end of its log is below.")
                                             .format(code=event.returncode), detailedText=tail)

    def onCancelTraining(self) -> None:
        if self._training is not None:
            self._training.request_cancel()  # SIGTERM now; onTrainingPoll's poll() kills it if it lingers

    def onDecompose(self) -> None:
        """Decompose the radiograph: layers per object and type, results table and bar chart."""
        def work(progress: ProgressRelay) -> None:
            radiograph = self._parameterNode.radiograph  # the one decomposed, whatever is picked meanwhile
            out = self.logic.decompose(self._parameterNode, progress)
            self.ui.oodLabel.text = ood_text(out.decomposition.ood)
            self.showResults(out, radiograph)

        self._runWork("Decomposing", work)

    def showResults(self, out: DecomposeOutput, radiograph: vtkMRMLScalarVolumeNode) -> None:
        """The first object's MDRR over ``radiograph``, beside the table and bar chart."""
        self._showFilm(radiograph, out.layers[(out.decomposition.names[0], "mdrr")], results=True)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(out.table.GetID())
        appLogic.GetSelectionNode().SetActivePlotChartID(out.chart.GetID())
        appLogic.PropagateTableSelection()
        appLogic.PropagatePlotChartSelection()

    @staticmethod
    def _showFilm(background: vtkMRMLScalarVolumeNode, foreground: vtkMRMLScalarVolumeNode | None = None,
                  opacity: float = 0.5, results: bool | None = None) -> None:
        """Show a film (with a detector layer over it) face on in the slice view of its plane:
        beside the table and plot views with ``results``, alone with False, as the layout is
        with None (see :func:`MSKdeXLib.layouts.show_film_layout`)."""
        show_film_layout(slicer.mrmlScene, background, results)
        slicer.util.setSliceViewerLayers(background=background, foreground=foreground, foregroundOpacity=opacity,
                                         fit=True, rotateToVolumePlane=True)


class MSKdeXLogic(ScriptedLoadableModuleLogic):
    """Thin: reads the parameter node and calls :class:`MSKdeXLib.pipeline.Pipeline`."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._pipeline = None

    @property
    def pipeline(self) -> Pipeline:
        """MSKdeXLib's Pipeline on the application scene (imported on first use: it needs torch and
        Resources/requirements.txt, which the widget's *Check dependencies* installs; no dialog here)."""
        if self._pipeline is None:
            require_dependencies()
            from MSKdeXLib.pipeline import Pipeline

            self._pipeline = Pipeline(slicer.mrmlScene)
        return self._pipeline

    def getParameterNode(self) -> MSKdeXParameterNode:
        return MSKdeXParameterNode(super().getParameterNode())

    def _geometry(self, p: MSKdeXParameterNode):
        from MSKdeXTraining.imaging.geometry import Geometry

        return Geometry(p.detectorSize, p.detectorSize, (p.pixelSpacing, p.pixelSpacing),
                        p.sourceDetectorDistance, p.sourceIsocenterDistance)

    def segmentationQC(self, p: MSKdeXParameterNode, progress: ProgressRelay | None = None) -> list[dict]:
        """QC rows (:func:`MSKdeXLib.qc_table.qc_rows`) of the segmentation; also fills the QC table node."""
        from MSKdeXLib.qc_table import qc_rows

        qc, _table = self.pipeline.segmentation_qc(p.ctVolume, p.segmentation, load_object_map(p.objectMap),
                                                   progress)
        return qc_rows(qc)

    def loadRadiograph(self, path: Path, pixelSpacing: float | None = None,
                       magnification: float | None = None) -> vtkMRMLScalarVolumeNode:
        """A new radiograph node read from ``path`` by MSKdeX's reader (magnification, padding, bit
        depth and colour kept for Decompose); ``pixelSpacing`` (mm) and ``magnification`` (SDD /
        SOD) override the file's."""
        return self.pipeline.load_radiograph(path, pixelSpacing, magnification,
                                             spacing_option="the 'File pixel spacing' field",
                                             magnification_option="the 'Magnification' field")

    def computeDRRs(self, p: MSKdeXParameterNode, progress: ProgressRelay) -> tuple[list[str], list[str]]:
        """Object-wise DRR layers of the CT in the AP pose; returns (object names, warnings:
        absent objects, implausible volumes, unmatched segments... (:func:`drr_warnings`))."""
        from MSKdeXLib.pipeline import drr_warnings

        result, _layers = self.pipeline.compute_drrs(
            p.ctVolume, p.segmentation, load_object_map(p.objectMap), self._geometry(p), p.radiograph, progress)
        return list(result.stack.names), drr_warnings(result.metrics)

    def drrObjects(self) -> list[str]:
        """The objects with DRR layers in the scene (without the backend: the panel lists them on
        entering, before the dependencies may be installed)."""
        return drr_objects(slicer.mrmlScene)

    def drrLayer(self, name: str, drrType: str,
                 radiograph: vtkMRMLScalarVolumeNode | None = None) -> vtkMRMLScalarVolumeNode | None:
        """The DRR layer of object ``name`` and ``drrType`` in the scene, if computed; placed like
        ``radiograph`` when given (to be shown over it)."""
        return self.pipeline.drr_layer(name, drrType, radiograph)

    def register(self, p: MSKdeXParameterNode, progress: ProgressRelay,
                 redo: bool = False) -> tuple[RegistrationResult, vtkMRMLScalarVolumeNode, str]:
        """Register ``p.bone`` (Redo: from its pose node) with the registration SDD / SOD (0: the
        radiograph file's); returns (result, aligned bone DRR layer, the SDD / SOD used as text)."""
        start = pose_from_transform_node(self.poseNode(p.bone)) if redo else None
        result, transform, layer = self.pipeline.register(
            p.ctVolume, p.segmentation, p.radiograph, load_object_map(p.objectMap), p.bone,
            p.registrationSDD or None, p.registrationSOD or None, p.registrationPreset, progress, start)
        return result, layer, self.pipeline.registration_distances(transform)

    @staticmethod
    def poseNode(bone: str) -> vtkMRMLLinearTransformNode:
        """The transform node of ``bone``'s registered pose; ValueError when there is none."""
        node = slicer.mrmlScene.GetFirstNodeByName(pose_node_name(bone))
        if node is None:
            raise ValueError(f"no registered pose for {bone}; click Register first")
        return node

    def acceptPose(self, bone: str) -> None:
        """Mark ``bone``'s registered pose as accepted (a femur then starts from an accepted pelvis)."""
        accept_pose(self.poseNode(bone))

    def startTraining(self, p: MSKdeXParameterNode) -> BackendProcess:
        """Start ``mskdex train`` on the parameter node's dataset, config and output in a child process."""
        return self.pipeline.training_process(p.datasetFolder, p.trainConfig, p.trainOutput, p.resumeTraining,
                                              p.holdOutForCalibration)

    def decompose(self, p: MSKdeXParameterNode, progress: ProgressRelay) -> DecomposeOutput:
        """Decompose ``p.radiograph`` with ``p.modelFolder``: layers, results table (``p.resultsTable``) and chart."""
        out = self.pipeline.decompose(p.modelFolder, p.radiograph, p.tta, progress=progress, table_node=p.resultsTable,
                                      magnification=p.radiographMagnification or None)
        p.resultsTable = out.table
        return out


class MSKdeXTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the bridge on a synthetic CT/segmentation and the module's GUI wiring."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_bridge_round_trip()
        self.test_widget_binds_parameters()

    def test_bridge_round_trip(self) -> None:
        """The MSKdeXLib tests (Testing/MSKdeXLibTest.py) against this application's MRML."""
        import unittest

        suite = unittest.defaultTestLoader.discover(str(Path(__file__).parent / "Testing"), pattern="MSKdeXLibTest.py")
        result = unittest.TextTestRunner(verbosity=2).run(suite)
        self.assertTrue(result.wasSuccessful() and result.testsRun > 0)
        self.delayDisplay("bridge tests passed")

    def test_widget_binds_parameters(self) -> None:
        slicer.util.selectModule("MSKdeX")  # the widget binds the parameter node when entered
        widget = slicer.modules.mskdex.widgetRepresentation().self()
        p = widget.logic.getParameterNode()
        p.pixelSpacing = 2.5
        self.assertAlmostEqual(widget.ui.pixelSpacingSpinBox.value, 2.5)
        widget.ui.ttaSpinBox.value = 3
        self.assertEqual(p.tta, 3)
        self.delayDisplay("parameter node bound to the GUI")
