"""Write small but complete DICOM files with pydicom, so tests know every value the files hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for UIDs made in tests


def uid(name: str) -> str:
    """A stable UID for a test name, so that two runs write identical files."""
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[name])


def make_dataset(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = attrs.get("SOPClassUID", CTImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = attrs.get("SOPInstanceUID", generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def write_series(
    folder: Path,
    *,
    patient_id: str | None = "PAT-1",
    patient_name: str = "Test^Patient",
    study: str = "study-1",
    series: str = "series-1",
    count: int = 10,
    modality: str = "CT",
    thickness: float = 1.25,
    study_date: str = "20210315",
    first_location: float = -100.0,
    **extra: Any,
) -> list[Path]:
    """Write `count` slices of one CT series into `folder`; returns the file paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        location = first_location + i * thickness
        attrs: dict[str, Any] = dict(
            PatientName=patient_name,
            PatientSex="F",
            PatientAge="045Y",
            PatientBirthDate="19760102",
            PatientIdentityRemoved="YES",
            StudyInstanceUID=uid(study),
            StudyDescription="CT CHEST",
            StudyDate=study_date,
            StudyTime="101530.25",
            StudyID="S1",
            SeriesDate=study_date,
            ReferringPhysicianName="Ref^Doctor",
            AccessionNumber="ACC001",
            SeriesInstanceUID=uid(series),
            SeriesDescription="AXIAL 1.25",
            Modality=modality,
            SOPInstanceUID=uid(f"{series}/{i}"),
            InstanceNumber=i + 1,
            SliceThickness=thickness,
            SliceLocation=location,
            PixelSpacing=[0.5, 0.5],
            ImagePositionPatient=[-125.0, -125.0, location],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
            Rows=512,
            Columns=512,
            KVP=120,
            ExposureTime=500,
            ConvolutionKernel="STANDARD",
            BodyPartExamined="CHEST",
            PatientPosition="HFS",
            AcquisitionNumber=1,
            AcquisitionDate=study_date,
            AcquisitionTime="101600",
            RescaleIntercept=-1024,
            RescaleSlope=1,
            PixelRepresentation=1,
            PixelPaddingValue=-2000,
        )
        if patient_id is not None:
            attrs["PatientID"] = patient_id
        attrs.update(extra)
        ds = make_dataset(**attrs)
        path = folder / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
