"""The sample data MSKdeX registers in Slicer's Sample Data module (no Qt).

The TotalSegmentator example CT (122 x 101 x 112 voxels, 3 mm, HU) and its automatic
segmentation, downloaded from the TotalSegmentator repository's test reference files
(Apache-2.0, wasserth/TotalSegmentator) and checked against their SHA-256. The CT holds a left
hip implant, so segmentation QC fails the objects around it (metal): a sample for the data flow,
not a case to train on.
"""

from __future__ import annotations

_BASE = "https://github.com/wasserth/TotalSegmentator/raw/master/tests/reference_files/"


def example_ct_source(thumbnail: str) -> dict:
    """Keyword arguments of ``SampleDataLogic.registerCustomSampleDataSource`` for the example CT."""
    files = ["example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"]
    return {"category": "MSKdeX", "sampleName": "MSKdeXExampleCT", "thumbnailFileName": thumbnail,
            "uris": [_BASE + f for f in files], "fileNames": files,
            "nodeNames": ["ExampleCT", "ExampleSegmentation"], "loadFileType": ["VolumeFile", "SegmentationFile"],
            "checksums": ["SHA256:dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
                          "SHA256:e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7"]}
