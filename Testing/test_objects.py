"""Object maps: built-in maps, the paper's object set, validation, per-side expansion."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from MSKdeXTraining.objects import (DEFAULT_OBJECTS, ObjectMap, ObjectMapError, builtin_maps,
                                    load_object_map)


def test_builtin_maps_follow_the_paper_object_set():
    assert builtin_maps() == ["pelvic_reference", "synthetic", "totalsegmentator"]
    for name in ("pelvic_reference", "synthetic"):
        assert load_object_map(name).names == DEFAULT_OBJECTS
    ts = load_object_map("totalsegmentator")
    assert ts.names == tuple(n for n in DEFAULT_OBJECTS if n not in ("obturator_externus", "pectineus"))
    assert ts["iliacus"].labels == (88, 89)  # iliopsoas stands in for iliacus
    # objects a hip CT cuts: every femur shaft, and iliopsoas where it stands in for iliacus
    assert {n: [o.name for o in load_object_map(n).objects if o.cut_at_region] for n in builtin_maps()} == {
        "pelvic_reference": ["femur"], "synthetic": ["femur"], "totalsegmentator": ["iliacus", "femur"]}
    assert ObjectMap.from_json(ts.to_json()) == ts
    assert all(o.cut_at_region for o in ts.per_side().objects if o.name.startswith(("femur_", "iliacus_")))


def test_totalsegmentator_map_matches_the_shared_label_names(shared_data):
    names = json.loads((shared_data / "totalsegmentator-example" / "labels.json").read_text())["labels"]
    ts = load_object_map("totalsegmentator")
    for o in ts.objects:
        for side, values in o.sides.items():
            assert all(names[str(v)].endswith(side) for v in values)


def test_totalsegmentator_class_names_are_accepted_names(shared_data):
    """Every label of the map is named by TotalSegmentator's own class name, through its object's
    name or an alias (hip_left for pelvis, iliopsoas_right for iliacus)."""
    names = json.loads((shared_data / "totalsegmentator-example" / "labels.json").read_text())["labels"]
    ts = load_object_map("totalsegmentator")
    sided = {f"{o.name}_{side}": v for o in ts.objects for side, (v,) in o.sides.items()}
    accepted = {**ts.aliases, **sided, **{o.name: o.labels[0] for o in ts.objects if not o.sides}}
    assert all(accepted.get(names[str(v)]) == v for o in ts.objects for v in o.labels)
    assert ts.aliases == {"hip_left": 77, "hip_right": 78, "iliopsoas_left": 88, "iliopsoas_right": 89}
    assert ts.select(["iliacus"]).aliases == {"iliopsoas_left": 88, "iliopsoas_right": 89}
    assert ts.per_side().aliases == ts.aliases and load_object_map("synthetic").aliases == {}


def test_aliases_are_not_part_of_the_recorded_map():
    """Cohorts, datasets and their hashes record to_json(): the aliases (segment names only) are
    left out, so a cohort assembled with the map before it had them is the same cohort."""
    ts = load_object_map("totalsegmentator")
    path = Path(__file__).resolve().parents[1] / "MSKdeXTraining" / "mappings" / "totalsegmentator.json"
    recorded = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("description", "aliases")}
    assert ts.aliases and ts.to_json() == recorded


@pytest.mark.parametrize("aliases, message", [
    ([1], r"map.json: field 'aliases' must map segment names to label values, got \[1\]"),
    ({"hip": 99}, r"map.json: aliases\['hip'\] must be a label value of an object, got 99"),
    ({"hip": True}, r"map.json: aliases\['hip'\] must be a label value of an object, got True"),
    ({"femur": 3}, r"map.json: aliases: 'femur' must be a non-empty name that is neither an object's nor "
                   r"begins with one and '_' \(the map's own segment names\)"),
    ({"femur_left": 3}, r"map.json: aliases: 'femur_left' must be a non-empty name that is neither"),
    ({"": 3}, r"map.json: aliases: '' must be a non-empty name"),
])
def test_malformed_aliases_are_named(aliases, message):
    with pytest.raises(ObjectMapError, match=message):
        ObjectMap.from_json(dict(load_object_map("synthetic").to_json(), aliases=aliases), "map.json")


def test_per_side_lookup_table_and_errors():
    synthetic = load_object_map("synthetic")
    sides = synthetic.per_side()
    assert "femur_left" in sides.names and "pelvis" in sides.names and len(sides) == 16
    table = synthetic.lookup_table(np.array([0, 1, 3, 4, 31]))
    assert table[3] == table[4] == synthetic.index("femur") and table[31] == -1 and table[0] == -1
    strict = ObjectMap.from_json(dict(synthetic.to_json(), unmapped_labels="error"))
    with pytest.raises(ObjectMapError, match=r"labels.nii: label values \[31\]"):
        strict.lookup_table(np.array([0, 1, 31]), "labels.nii")
    bad = synthetic.to_json()
    bad["objects"][1]["labels"] = [11]
    with pytest.raises(ObjectMapError, match=r"objects\[1\].labels: value 11 already belongs"):
        ObjectMap.from_json(bad, "map.json")
    with pytest.raises(ObjectMapError, match="field 'version'"):
        ObjectMap.from_json(dict(synthetic.to_json(), version=9))


@pytest.mark.parametrize("change, message", [
    (lambda m: [m], r"map.json: expected a JSON object .* got list"),
    (lambda m: dict(m, objects=[1]), r"map.json: objects\[0\] must be an object"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], sides={"left": 1})]),
     r"map.json: objects\[0\].sides must map each side to a non-empty list"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], cut_at_region="yes")]),
     r"map.json: objects\[0\].cut_at_region must be true or false, got 'yes'"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], labels=[70000], sides={})]),
     r"map.json: objects\[0\].labels must be a non-empty list of integers 1-65535, got \[70000\]"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], labels=[True], sides={})]),  # JSON true, not a label
     r"map.json: objects\[0\].labels must be a non-empty list of integers 1-65535, got \[True\]"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], labels=[3, 4], sides={"left": ["3"], "right": [4]})]),
     r"map.json: objects\[0\].sides must map each side to a non-empty list of its label values, got"),
    (lambda m: dict(m, objects=[dict(m["objects"][0], labels=[3, 4], sides={"left": [[3]], "right": [4]})]),
     r"map.json: objects\[0\].sides must map each side to a non-empty list of its label values, got"),
])
def test_malformed_map_shapes_are_named(change, message):
    with pytest.raises(ObjectMapError, match=message):
        ObjectMap.from_json(change(load_object_map("synthetic").to_json()), "map.json")


def test_a_map_read_from_a_file_is_named_by_its_file(tmp_path):
    """Errors about a map from a JSON file name that file (its internal name alone may be any);
    a built-in map is named by its name, and derived maps keep the file."""
    from MSKdeXTraining.imaging.registration.bodies import rigid_bodies

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dict(load_object_map("synthetic").to_json(), unmapped_labels="error",
                                    name="pelvic_reference")))
    mine = load_object_map(path)
    at = re.escape(str(path))
    assert mine.title == f"object map 'pelvic_reference' ({path})" == mine.select(["pelvis"]).title
    assert mine.per_side().title == f"object map 'pelvic_reference-per-side' ({path})"
    assert load_object_map("synthetic").title == "object map 'synthetic'"
    with pytest.raises(ObjectMapError, match=rf"labels.nii: label values \[31\] are not in object map "
                                             rf"'pelvic_reference' \({at}\)"):
        mine.lookup_table(np.array([0, 31]), "labels.nii")
    with pytest.raises(ObjectMapError, match=rf"object map 'pelvic_reference' \({at}\): registration needs"):
        rigid_bodies(mine.select(["pelvis"]))
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(load_object_map("synthetic").to_json()).encode())  # Notepad's BOM
    assert load_object_map(path) == load_object_map("synthetic")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff")  # not text at all
    with pytest.raises(ObjectMapError, match=rf"{at}: not a JSON object map \(not UTF-8 text"):
        load_object_map(path)


def test_negative_label_values_are_refused_and_select_keeps_the_given_order():
    """lookup_table refuses a negative label value; select returns the named objects in the order asked for."""
    synthetic = load_object_map("synthetic")
    with pytest.raises(ObjectMapError, match=r"labels.nii: label values must be >= 0, found -1"):
        synthetic.lookup_table(np.array([0, -1, 1]), "labels.nii")
    picked = synthetic.select(["femur", "pelvis"])
    assert picked.names == ("femur", "pelvis")
    table = picked.lookup_table(np.array([0, 1, 3]))
    assert (table[3], table[1]) == (0, 1)


@pytest.mark.parametrize("objects, message", [
    ([{"name": "pelvis", "kind": "bone", "labels": [0]}],
     r"map.json: objects\[0\].labels must be a non-empty list of integers 1-65535, got \[0\]"),
    ([{"name": "femur", "kind": "bone", "labels": [3, 4], "sides": {"left": [3], "right": [5]}}],
     r"map.json: objects\[0\].sides must partition objects\[0\].labels \[3, 4\]"),
    ([{"name": "iliacus", "kind": "muscle", "labels": [3, 4], "sides": {"L": [3], "R": [4]}}],
     r"map.json: objects\[0\].sides must name the patient's 'left' and 'right' sides, got \['L', 'R'\]"),
    ([{"name": "iliacus", "kind": "muscle", "labels": [3], "sides": {"left": [3]}}],
     r"objects\[0\].sides must name the patient's 'left' and 'right' sides, got \['left'\]"),
    ([{"name": "femur", "kind": "bone", "labels": [3]}, {"name": "femur", "kind": "bone", "labels": [4]}],
     r"map.json: objects\[1\].name 'femur' appears twice"),
])
def test_background_labels_sides_outside_the_labels_and_repeated_names_are_refused(objects, message):
    """from_json refuses label 0 (background), sides that are not left and right or do not partition the
    labels, and a name used twice."""
    with pytest.raises(ObjectMapError, match=message):
        ObjectMap.from_json({"format": "mskdex-object-map", "version": 1, "objects": objects}, "map.json")
