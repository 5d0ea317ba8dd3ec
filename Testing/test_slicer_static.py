"""Static checks of the Slicer extension: CMake lists, the module file, the .ui, the index JSON.

These read files only (MSKdeX.py needs the full Slicer application to import, so it is
checked through its syntax tree).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MSKdeX"
UI = MODULE / "Resources" / "UI" / "MSKdeX.ui"
MODULE_PY = MODULE / "MSKdeX.py"

#: Properties allowed by the Extensions Index description schema
#: (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json, additionalProperties: false).
INDEX_ALLOWED = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                 "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
INDEX_REQUIRED = {"$schema", "category", "scm_url"}

#: Widget classes the parameterNodeWrapper GUI connectors accept for each field type
#: (Slicer's parameterNodeWrapper/guiConnectors.py; they compare the exact widget type).
CONNECTORS = {"bool": {"QCheckBox", "QPushButton"}, "int": {"QSpinBox", "QSlider"},
              "float": {"QDoubleSpinBox", "ctkSliderWidget"}, "str": {"QLineEdit", "QTextEdit"},
              "choice": {"QComboBox"}, "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
              "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"}}


def cmake_list(text: str, variable: str) -> list[str]:
    """Items of ``set(VARIABLE ...)`` in a CMake file, with ${MODULE_NAME} substituted."""
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"set({variable} ...) not found"
    items = [i for i in m.group(1).split() if not i.startswith("#")]
    return [i.replace("${MODULE_NAME}", "MSKdeX") for i in items]


def cmake_vars(text: str) -> dict[str, str]:
    return {k: v for k, v in re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def parameter_fields() -> dict[str, str]:
    """Field name -> kind (bool/int/float/str/choice/Path/node) of the @parameterNodeWrapper class."""
    tree = ast.parse(MODULE_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            fields = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign):
                    text = ast.unparse(stmt.annotation)
                    if "Choice(" in text:
                        kind = "choice"
                    elif text.startswith("vtkMRML"):
                        kind = "node"
                    else:
                        kind = re.sub(r"Annotated\[(\w+),.*", r"\1", text)
                    fields[stmt.target.id] = kind
            return fields
    raise AssertionError("no @parameterNodeWrapper class in MSKdeX.py")


def test_module_cmake_lists_every_file_and_only_existing_files():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    missing = [f for f in scripts + resources if not (MODULE / f).is_file()]
    assert not missing, f"listed in MSKdeX/CMakeLists.txt but absent: {missing}"
    on_disk = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert on_disk - set(scripts) == set(), f"module .py files not listed: {on_disk - set(scripts)}"
    resource_files = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resource_files - set(resources) == set(), f"resources not listed: {resource_files - set(resources)}"
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS", text, re.S)
    assert "add_subdirectory(Testing)" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_testing_cmake_scripts_exist():
    text = (MODULE / "Testing" / "CMakeLists.txt").read_text()
    scripts = re.findall(r"slicer_add_python_unittest\(SCRIPT\s+(\S+)\)", text)
    assert scripts
    for s in scripts:
        assert (MODULE / "Testing" / s.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")).is_file(), s


def test_top_level_cmake_follows_the_extension_template():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(MSKdeX\)", text, re.M)
    variables = cmake_vars(text)
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                 "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert variables.get(name), f"{name} missing or empty"
    assert variables["EXTENSION_CATEGORY"] == "Quantification"
    assert variables["EXTENSION_DEPENDS"] == "PyTorch"
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    for sub in re.findall(r"add_subdirectory\((\w+)\)", text):
        assert (ROOT / sub / "CMakeLists.txt").is_file(), sub
    assert {"MSKdeX", "MSKdeXTraining"} <= set(re.findall(r"add_subdirectory\((\w+)\)", text))
    # the icon and screenshot the index shows are files of this repository
    for url in (variables["EXTENSION_ICONURL"], variables["EXTENSION_SCREENSHOTURLS"]):
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url


def test_backend_cmake_installs_every_package_file():
    text = (ROOT / "MSKdeXTraining" / "CMakeLists.txt").read_text()
    patterns = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in
                re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/[^\s)]+", text) if "*" in p]
    assert "*.py" in patterns
    package = ROOT / "MSKdeXTraining"
    unshipped = []
    for path in package.rglob("*"):
        rel = path.relative_to(package).as_posix()
        if path.is_dir() or "__pycache__" in path.parts or rel == "CMakeLists.txt":
            continue
        # GLOB_RECURSE: "*.py" matches at any depth, "data/*" anything under data/
        if not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(path.name, p) and "/" not in p
                   for p in patterns):
            unshipped.append(rel)
    assert not unshipped, f"backend files the extension would not ship: {unshipped}"
    assert "ctkMacroCompilePythonScript" in text and "Slicer_QTSCRIPTEDMODULES_LIB_DIR" in text


def test_module_file_compiles_and_has_the_template_classes():
    source = MODULE_PY.read_text()
    compile(source, str(MODULE_PY), "exec")
    classes = [n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)]
    assert classes == ["MSKdeX", "MSKdeXParameterNode", "MSKdeXWidget", "MSKdeXLogic", "MSKdeXTest"]


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_PY.read_text()))
    used |= set(re.findall(r"widget\.ui\.(\w+)", MODULE_PY.read_text()))
    missing = used - set(ui_widgets())
    assert used and not missing, f"MSKdeX.py uses widgets absent from MSKdeX.ui: {sorted(missing)}"


def test_ui_parameter_names_are_parameter_node_fields_of_a_fitting_type():
    fields = parameter_fields()
    bound = {}
    for name, w in ui_widgets().items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (name, w.get("class"))
    unknown = set(bound) - set(fields)
    assert not unknown, f"SlicerParameterName values that are not parameter-node fields: {unknown}"
    unbound = set(fields) - set(bound)
    assert not unbound, f"parameter-node fields no widget edits: {unbound}"
    for field, (widget, cls) in bound.items():
        assert cls in CONNECTORS[fields[field]], f"{widget} ({cls}) cannot edit {field} ({fields[field]})"


def test_ui_declares_its_custom_widgets_and_scene_connections():
    root = ET.parse(UI).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML"))}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    selectors = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors <= receivers, f"node selectors without a scene: {selectors - receivers}"


def test_index_json_has_exactly_the_allowed_fields_and_matches_the_project():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    project = re.search(r"^project\((\w+)\)", cmake, re.M).group(1)
    path = ROOT / f"{project}.json"
    assert path.is_file(), "the description file must be named after project()"
    data = json.loads(path.read_text())
    assert set(data) <= INDEX_ALLOWED, f"fields the schema forbids: {set(data) - INDEX_ALLOWED}"
    assert INDEX_REQUIRED <= set(data)
    assert data["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    variables = cmake_vars(cmake)
    assert data["category"] == variables["EXTENSION_CATEGORY"]
    assert data["build_dependencies"] == variables["EXTENSION_DEPENDS"].split(";")
    assert isinstance(data["tier"], int) and 1 <= data["tier"] <= 5
    assert data["scm_url"].startswith("https://") and data["scm_revision"]


def test_requirements_are_backend_dependencies():
    """Resources/requirements.txt parses and asks only for packages the backend declares."""
    import sys

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.requirements import Requirement

    sys.path.insert(0, str(MODULE))
    from MSKdeXLib.dependencies import REQUIREMENTS, read_requirements

    assert REQUIREMENTS == MODULE / "Resources" / "requirements.txt"
    declared = {Requirement(d).name.lower() for d in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    wanted = {r.name.lower() for r in read_requirements()}
    assert wanted and wanted <= declared, f"not backend dependencies: {wanted - declared}"
    assert "torch" not in wanted, "torch comes from the PyTorch extension, never from pip here"


def test_icon_is_a_128_pixel_png():
    for path in (MODULE / "Resources" / "Icons" / "MSKdeX.png", ROOT / "Resources" / "MSKdeX.png"):
        header = path.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", path
        assert struct.unpack(">II", header[16:24]) == (128, 128), path


def test_lib_never_imports_qt():
    for path in (MODULE / "MSKdeXLib").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.split(".")[0] in ("qt", "ctk", "PythonQt", "PySide6", "PyQt5"), f"{path.name}: {n}"


def test_module_loads_without_torch():
    """MSKdeX.py imports at load time only MSKdeX modules that work before PyTorch is installed."""
    pytest.importorskip("slicer")  # MSKdeXLib's MRML modules need it (slicer-core outside Slicer)
    import subprocess
    import sys

    tree = ast.parse(MODULE_PY.read_text())
    lib = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("MSKdeX")]
    assert lib
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1])\n"
            + "".join(f"import {m}\n" for m in lib))
    proc = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_slicer_side_tests_run_without_torch():
    """MSKdeX/Testing/MSKdeXLibTest.py, which ctest runs inside Slicer, needs only the MRML
    libraries: it passes with torch impossible to import (a Slicer without PyTorch)."""
    pytest.importorskip("slicer")
    import subprocess
    import sys

    code = ("import importlib.abc, sys, unittest\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('torch is not installed in this Slicer')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import MSKdeXLibTest\n"
            "result = unittest.TextTestRunner().run(unittest.defaultTestLoader.loadTestsFromModule(MSKdeXLibTest))\n"
            "sys.exit(not result.wasSuccessful() or 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(MODULE / "Testing")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_module_constants_match_the_backend():
    """The module takes the DRR types and the registered bodies from the backend's torch-free
    modules (no copies), and its MAX_TTA bound from the backend."""
    from MSKdeXTraining.imaging.registration import rigid_bodies
    from MSKdeXTraining.inference import MAX_TTA
    from MSKdeXTraining.objects import RIGID_BODIES, load_object_map

    text = MODULE_PY.read_text()
    assigned = {node.targets[0].id for node in ast.parse(text).body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert not assigned & {"DRR_TYPES", "BONES", "RIGID_BODIES"}
    assert "from MSKdeXTraining.drr_types import DRR_TYPES" in text
    assert "Choice(list(DRR_TYPES))" in text and "Choice(list(RIGID_BODIES))" in text
    assert tuple(rigid_bodies(load_object_map("synthetic"))) == RIGID_BODIES
    assert f"tta: Annotated[int, WithinRange(1, {MAX_TTA})]" in text
    # Load radiograph reads with the Decompose section's Magnification, as Decompose does
    assert re.search(r"self\.logic\.loadRadiograph\(p\.radiographFile, p\.radiographFileSpacing or None,\s*"
                     r"p\.radiographMagnification or None\)", text)


def test_sample_data_checksums_match_the_files(shared_data):
    import hashlib
    import sys

    sys.path.insert(0, str(MODULE))
    from MSKdeXLib.sample_data import example_ct_source

    source = example_ct_source("icon.png")
    folder = shared_data / "totalsegmentator-example"
    for name, checksum in zip(source["fileNames"], source["checksums"]):
        assert checksum == "SHA256:" + hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
    assert len(source["uris"]) == len(source["nodeNames"]) == len(source["loadFileType"]) == 2


def test_logic_shows_no_dialogs():
    """Logic raises, the widget shows: no dialogs, layouts or views in the Logic (a logic method may
    run headless, in batch mode)."""
    tree = ast.parse(MODULE_PY.read_text())
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MSKdeXLogic")
    called = {ast.unparse(n.func) for n in ast.walk(logic) if isinstance(n, ast.Call)}
    dialogs = {c for c in called if c in ("ensure_torch", "ensure_requirements")
               or c.endswith(("Display", "messageBox")) or "QMessageBox" in c}
    assert not dialogs, dialogs
    views = {c for c in called if any(g in c for g in ("layoutManager", "setSliceViewerLayers", "InLayout",
                                                          "applicationLogic", "show_film_layout"))}
    assert not views, views


def test_films_are_shown_through_the_film_layout():
    """Every film the widget shows goes through _showFilm, which switches to the view of its plane
    first (a one-slice film is a line in the other views)."""
    tree = ast.parse(MODULE_PY.read_text())
    shown_in = [f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
                if isinstance(n, ast.Call) and ast.unparse(n.func) == "slicer.util.setSliceViewerLayers"]
    assert shown_in == ["_showFilm"], shown_in
    calls = [ast.unparse(n.func) for n in ast.walk(_method("_showFilm")) if isinstance(n, ast.Call)]
    assert calls.index("show_film_layout") < calls.index("slicer.util.setSliceViewerLayers")
    users = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for n in ast.walk(f)
             if isinstance(n, ast.Call) and ast.unparse(n.func) == "self._showFilm"}
    assert users >= {"onLoadRadiograph", "_showDRR", "onRegister", "showResults"}, users
    # a new film alone (not beside the last patient's results), the results beside their film
    for method, results in (("onLoadRadiograph", "False"), ("showResults", "True")):
        [call] = [n for n in ast.walk(_method(method))
                  if isinstance(n, ast.Call) and ast.unparse(n.func) == "self._showFilm"]
        assert {k.arg: ast.unparse(k.value) for k in call.keywords}.get("results") == results, method


def test_help_links_to_the_extension_homepage():
    homepage = cmake_vars((ROOT / "CMakeLists.txt").read_text())["EXTENSION_HOMEPAGE"]
    assert homepage.endswith("docs/slicer.md") and f"href='{homepage}'" in MODULE_PY.read_text()


def _method(name: str) -> ast.FunctionDef:
    return next(n for n in ast.walk(ast.parse(MODULE_PY.read_text())) if isinstance(n, ast.FunctionDef)
                and n.name == name)


def test_a_failed_training_shows_an_error_with_the_log_tail():
    """A training that exits non-zero (not cancelled) is an error dialog with the end of its log
    as detailed text, and the status says "failed"; not only a log line."""
    poll = _method("onTrainingPoll")
    shown = [n for n in ast.walk(poll) if isinstance(n, ast.Call) and ast.unparse(n.func) == "slicer.util.errorDisplay"]
    assert shown and {k.arg for k in shown[0].keywords} >= {"detailedText"}
    status = [n for n in ast.walk(poll) if isinstance(n, ast.Assign)
              and any(ast.unparse(t) == "self.ui.statusLabel.text" for t in n.targets)]
    assert status and "Training {state}" in ast.unparse(status[0].value)  # the status line says the state...
    assert "failed with exit code {event.returncode}" in ast.unparse(poll)  # ...and a failure is one
    assert "event.cancelled" in ast.unparse(poll)  # a cancelled run is told apart by its event, not its text


def test_the_widget_self_test_enters_the_module_first():
    """connectGui binds the parameter node on enter(): the self-test selects the module first."""
    first = _method("test_widget_binds_parameters").body[0]
    assert ast.unparse(first) == "slicer.util.selectModule('MSKdeX')"


#: Widget slots that show no error dialog: cancelling, scene events, the training poll (a timer's).
UNGUARDED_SLOTS = {"onCancelWork", "onCancelTraining", "onSceneStartClose", "onSceneEndClose", "onTrainingPoll"}


def test_every_widget_slot_shows_its_errors():
    """Each on* slot of the widget runs in slicer.util.tryWithErrorDisplay or through _runWork
    (which does): an exception in a Qt slot otherwise only reaches the Python console."""
    tree = ast.parse(MODULE_PY.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MSKdeXWidget")
    bare = []
    for slot in (n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name.startswith("on")):
        calls = {ast.unparse(n.func) for n in ast.walk(slot) if isinstance(n, ast.Call)}
        guarded = [s for s in slot.body if isinstance(s, ast.With) and any(
            ast.unparse(i.context_expr.func) == "slicer.util.tryWithErrorDisplay" for i in s.items
            if isinstance(i.context_expr, ast.Call))]
        if not guarded and "self._runWork" not in calls and slot.name not in UNGUARDED_SLOTS:
            bare.append(slot.name)
    assert not bare, f"slots whose errors reach no dialog: {bare}"


def test_the_training_bar_shows_the_log_text_literally_and_starts_clean():
    """The tqdm text goes through bar_format (its % kept literal); a new training resets the format."""
    poll, start = ast.unparse(_method("onTrainingPoll")), ast.unparse(_method("onTrain"))
    assert "self.ui.trainProgressBar.setFormat(bar_format(event.text))" in poll
    assert "self.ui.trainProgressBar.setFormat(PERCENT_FORMAT)" in start


def test_the_module_checks_python_before_loading_the_backend():
    """On an older Python the module stops with require_python's message, not in the backend."""
    body = ast.parse(MODULE_PY.read_text()).body
    checked = next(i for i, n in enumerate(body) if ast.unparse(n) == "require_python()")
    backend = [i for i, n in enumerate(body) if isinstance(n, ast.ImportFrom) and n.module.startswith("MSKdeXTraining")]
    assert backend and checked < min(backend)


def test_steps_call_no_slot_and_short_slots_wait_for_steps():
    """A step's work (a function given to _runWork) calls no on* slot: the slot's own error dialog
    would come on top of the step's and mark a finished step failed. A slot with a dialog of its
    own returns at once while a step runs (its progress reports let Qt signals through)."""
    tree = ast.parse(MODULE_PY.read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MSKdeXWidget")
    slots = [n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name.startswith("on")]
    for slot in slots:
        for work in (n for n in ast.walk(slot) if isinstance(n, ast.FunctionDef) and n is not slot):
            called = {ast.unparse(c.func) for c in ast.walk(work) if isinstance(c, ast.Call)}
            assert not {c for c in called if c.startswith("self.on")}, (slot.name, called)
        dialog = any(isinstance(s, ast.With) and "tryWithErrorDisplay" in ast.unparse(s) for s in slot.body)
        if dialog:
            first = next(s for s in slot.body if not isinstance(s, ast.Expr))  # after the docstring
            assert isinstance(first, ast.If) and "self._relay is not None" in ast.unparse(first.test), slot.name


def test_entering_the_module_needs_no_backend():
    """Opening the panel, entering it again and closing a scene run initializeParameterNode; it
    and the Logic methods it calls never reach the pipeline (which needs PyTorch): before *Check
    dependencies* has run, that would raise on every entry."""
    tree = ast.parse(MODULE_PY.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods = {c: {f.name: f for f in classes[c].body if isinstance(f, ast.FunctionDef)}
               for c in ("MSKdeXWidget", "MSKdeXLogic")}
    init = methods["MSKdeXWidget"]["initializeParameterNode"]
    called = {c.func.attr for c in ast.walk(init) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
              and ast.unparse(c.func.value) == "self.logic"}
    assert "drrObjects" in called
    for body in [init] + [methods["MSKdeXLogic"][name] for name in called if name in methods["MSKdeXLogic"]]:
        names = {n.attr for n in ast.walk(body) if isinstance(n, ast.Attribute)} | \
                {n.id for n in ast.walk(body) if isinstance(n, ast.Name)}
        assert not names & {"pipeline", "require_dependencies", "ensure_torch"}, body.name
