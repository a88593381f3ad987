"""Generate a deterministic, realistic synthetic DICOM corpus for the ingest benchmark.

Usage (from the repository root, with the project's venv):

    .venv/bin/python bench/gen_corpus.py --files 10000 --out corpus/10k [--seed 1] [--jobs N] [--force]

The same arguments (and the same pydicom version) give byte-identical files. The corpus is laid out as
``OUT/<patient>/<study>/<series>/<instance>.dcm`` and looks like what a PACS export of several scanners holds:

* patients with 1-4 studies, studies with 1-8 series, series of 1 (CR/DX, scouts) to several hundred slices;
* modalities CT (scout, soft-tissue and thin bone kernels, coronal reformats), MR (localizer, T1/T2/FLAIR/DWI,
  3D post-contrast), PET/CT (CT for attenuation correction + PT with per-slice RescaleSlope) and CR/DX;
* the usual patient/study/series/image attributes with plausible values (geometry that walks along the
  table, per-slice acquisition times, CT rescale -1024 and PixelPaddingValue, PT decay-corrected slopes),
  standard sequences (procedure codes, request attributes with a nested code sequence, referenced
  images, radiopharmaceutical information with nested radionuclide codes), Latin-1 and UTF-8 names, a
  de-identified subset, and the private blocks of the vendor (GE, Siemens with CSA headers of some KB,
  Philips with a private sequence), so that a header is some KB, as real headers are;
* small pixel data: every image is 64x64 16-bit (8 KiB), to keep 100k files around 1.5 GB. Real CT slices
  are 512x512 (512 KiB); as the ingest stops before the pixel data, only the bytes read from disk differ.

Files are written explicit VR little endian with a 128-byte preamble and a proper file meta group.
Series are generated in a multiprocessing pool (``--jobs``, default: all cores); the plan of the whole
corpus (who, what, which UIDs) is drawn from one seeded generator first, so the pool does not change
what is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import multiprocessing
import os
import random
import shutil
import struct
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

ROWS = COLUMNS = 64
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1079.1"  # fixed, so files do not depend on the writer
IMPLEMENTATION_VERSION = "DICOMDB_BENCH_1"

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}

# (manufacturer, model, UID root used by that vendor's devices, software version)
SCANNERS: dict[str, list[tuple[str, str, str, str]]] = {
    "CT": [
        ("GE MEDICAL SYSTEMS", "Revolution CT", "1.2.840.113619.2.55.3", "revo_ct_19a.40"),
        ("GE MEDICAL SYSTEMS", "DISCOVERY CT750 HD", "1.2.840.113619.2.290.3", "gmp_vct.42"),
        ("SIEMENS", "SOMATOM Definition AS+", "1.3.12.2.1107.5.1.4", "syngo CT VA48A"),
        ("SIEMENS", "SOMATOM Force", "1.3.12.2.1107.5.1.4", "syngo CT VB20A"),
        ("Philips", "iCT 256", "1.3.46.670589.33.1", "4.1.6"),
    ],
    "MR": [
        ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "1.2.840.113619.2.408", "27\\LX\\MR DV26.0_R01"),
        ("SIEMENS", "MAGNETOM Skyra", "1.3.12.2.1107.5.2.46", "syngo MR E11"),
        ("SIEMENS", "MAGNETOM Prisma", "1.3.12.2.1107.5.2.43", "syngo MR XA30"),
        ("Philips Medical Systems", "Ingenia", "1.3.46.670589.11", "5.6.1\\5.6.1.1"),
    ],
    "PETCT": [
        ("SIEMENS", "Biograph mCT", "1.3.12.2.1107.5.1.4", "VG60A"),
        ("GE MEDICAL SYSTEMS", "Discovery MI", "1.2.840.113619.2.131", "pet_coreload.46"),
    ],
    "CR": [("FUJIFILM Corporation", "FCR PROFECT CS", "1.2.392.200036.9125", "A16")],
    "DX": [
        ("Philips Medical Systems", "DigitalDiagnost", "1.3.46.670589.30", "4.3.2"),
        ("Carestream Health", "DRX-Evolution", "1.2.840.113564", "5.7.412"),
    ],
}
INSTITUTIONS = ["St. Mary Hospital", "Klinikum Nord", "Hopital Saint-Louis", "City Imaging Center", "Univ. Clinic"]
FAMILY = ["Smith", "Garcia", "Nguyen", "Meyer", "Rossi", "Kowalski", "Jensen", "Okafor", "Tanaka", "Silva", "Brown"]
GIVEN = ["John", "Maria", "Wei", "Anna", "Paolo", "Fatima", "Lars", "Chen", "Olga", "Ahmed", "Emma", "Lucas"]
FAMILY_LATIN1 = ["Müller", "Gonçalves", "Sørensen", "Dupré", "Núñez", "Lefèvre", "Ångström"]
GIVEN_LATIN1 = ["Jürgen", "Élodie", "François", "Björn", "José", "Zoë", "Inés"]
NAMES_UTF8 = [("Παπαδόπουλος", "Γιώργος"), ("Иванова", "Мария"), ("Wiśniewski", "Łukasz"), ("Dvořák", "Jiří")]
PHYSICIANS = ["House^Gregory", "Grey^Meredith", "Ross^Doug^^Dr", "Quinn^Michaela", "", "Kildare^James^^Dr"]


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """Everything needed to write one series; drawn in the parent so that workers are deterministic."""

    index: int
    folder: str
    seed: int
    modality: str
    kind: str  # e.g. "scout", "axial", "t1", "dwi", "pet", "chest"
    count: int
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    scanner: tuple[str, str, str, str]


@dataclass
class Plan:
    series: list[SeriesPlan] = field(default_factory=list)
    patients: int = 0
    studies: int = 0

    @property
    def files(self) -> int:
        return sum(s.count for s in self.series)


def uid(root: str, *parts: object) -> str:
    """A deterministic UID under a vendor root: root + digits of a hash of `parts` (at most 64 chars)."""
    digest = int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16], "big")
    return f"{root}.{digest}"[:64].rstrip(".")


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _tm(seconds: float) -> str:
    seconds %= 86400
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def _ds(value: float, digits: int = 6) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text[:16]


# Series templates per study type: (modality, kind, description, min slices, max slices, probability).
STUDY_TYPES: dict[str, list[tuple[str, str, str, int, int, float]]] = {
    "CT": [
        ("CT", "scout", "Topogram 0.6 T20f", 1, 2, 1.0),
        ("CT", "axial", "Abdomen 5.0 B30f", 40, 90, 1.0),
        ("CT", "thin", "Abdomen 1.0 B70f", 150, 450, 0.7),
        ("CT", "coronal", "Cor 3.0 Br40", 60, 120, 0.5),
        ("CT", "axial", "Abdomen PV 5.0 I30f", 40, 90, 0.4),
    ],
    "MR": [
        ("MR", "localizer", "localizer", 3, 9, 1.0),
        ("MR", "t1", "t1_se_sag", 19, 25, 0.8),
        ("MR", "t2", "t2_tse_tra", 24, 40, 1.0),
        ("MR", "flair", "t2_flair_tra", 24, 40, 0.8),
        ("MR", "dwi", "ep2d_diff_tra_b1000", 25, 75, 0.6),
        ("MR", "t1post", "t1_mprage_sag_post", 144, 208, 0.5),
    ],
    "PETCT": [
        ("CT", "scout", "Topogram 0.6 T20f", 1, 1, 1.0),
        ("CT", "ctac", "CTAC 3.0 B19f", 200, 320, 1.0),
        ("PT", "pet", "PET WB AC", 200, 320, 1.0),
        ("PT", "pet_nac", "PET WB NAC", 200, 320, 0.3),
    ],
    "CR": [("CR", "chest", "Chest PA", 1, 1, 1.0), ("CR", "chest", "Chest LAT", 1, 1, 0.8)],
    "DX": [("DX", "extremity", "Knee AP", 1, 1, 1.0), ("DX", "extremity", "Knee LAT", 1, 1, 0.9)],
}
STUDY_WEIGHTS = {"CT": 0.28, "MR": 0.27, "PETCT": 0.1, "CR": 0.2, "DX": 0.15}
STUDY_DESCRIPTIONS = {
    "CT": ["CT ABDOMEN PELVIS W CONTRAST", "CT CHEST ABDOMEN", "CT THORAX"],
    "MR": ["MRI BRAIN W/WO CONTRAST", "MR HEAD", "MRT Schaedel"],
    "PETCT": ["PET/CT FDG WHOLE BODY", "PET-CT Ganzkoerper"],
    "CR": ["XR CHEST 2 VIEWS"],
    "DX": ["XR KNEE 2 VIEWS RIGHT", "XR KNEE LEFT"],
}
BODY_PART = {"CT": "ABDOMEN", "MR": "HEAD", "PETCT": "WHOLEBODY", "CR": "CHEST", "DX": "KNEE"}


def plan_corpus(files: int, seed: int) -> Plan:
    """Draw patients, studies and series until `files` instances are planned (the last series is cut)."""
    rng = random.Random(seed)
    plan = Plan()
    remaining = files
    study_types, weights = list(STUDY_WEIGHTS), list(STUDY_WEIGHTS.values())
    while remaining > 0:
        p = plan.patients
        plan.patients += 1
        patient = _patient(rng, p, seed)
        first_day = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3000))
        for s in range(rng.choice((1, 1, 2, 2, 3, 4))):
            if remaining <= 0:
                break
            study_type = rng.choices(study_types, weights)[0]
            scanner = rng.choice(SCANNERS[study_type])
            day = first_day + dt.timedelta(days=s * rng.randrange(20, 200))
            study = _study(rng, patient, study_type, scanner, day, seed, p, s)
            plan.studies += 1
            series_number, clock = 1, study["_start"]
            for modality, kind, description, low, high, probability in STUDY_TYPES[study_type]:
                if remaining <= 0:
                    break
                if rng.random() > probability:
                    continue
                count = min(rng.randint(low, high), remaining)
                remaining -= count
                clock += rng.uniform(30, 400)
                series = _series(rng, study, modality, kind, description, series_number, clock, scanner)
                folder = os.path.join(
                    patient["_folder"], study["_folder"], f"SE{series_number:03d}_{kind.upper()}_{modality}"
                )
                plan.series.append(
                    SeriesPlan(
                        len(plan.series),
                        folder,
                        rng.getrandbits(63),
                        modality,
                        kind,
                        count,
                        patient,
                        study,
                        series,
                        scanner,
                    )
                )
                series_number += 1
    return plan


def _patient(rng: random.Random, p: int, seed: int) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.07:
        family, given = rng.choice(NAMES_UTF8)
        charset = "ISO_IR 192"
    elif roll < 0.22:
        family, given = rng.choice(FAMILY_LATIN1), rng.choice(GIVEN_LATIN1)
        charset = "ISO_IR 100"
    else:
        family, given = rng.choice(FAMILY), rng.choice(GIVEN)
        charset = "ISO_IR 100"
    sex = rng.choice("MF")
    birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
    patient_id = f"{rng.choice(('PID', 'MRN', 'H'))}{seed % 100:02d}{p:06d}"
    anonymized = rng.random() < 0.2
    patient: dict[str, Any] = {
        "SpecificCharacterSet": charset,
        "PatientName": f"{family.upper() if rng.random() < 0.5 else family}^{given}",
        "PatientID": patient_id,
        "IssuerOfPatientID": "HOSP_A",
        "PatientBirthDate": _da(birth),
        "PatientSex": sex,
        "PatientWeight": _ds(rng.uniform(45, 120), 1),
        "PatientSize": _ds(rng.uniform(1.5, 1.95), 2),
        "_birth": birth,
        "_folder": f"{patient_id}",
    }
    if anonymized:
        patient["PatientName"] = f"ANON{p:06d}"
        patient["PatientBirthDate"] = ""
        patient["PatientIdentityRemoved"] = "YES"
        patient["DeidentificationMethod"] = "Basic Application Confidentiality Profile; Retain Longitudinal"
        patient["LongitudinalTemporalInformationModified"] = rng.choice(("MODIFIED", "UNMODIFIED"))
    return patient


def _study(
    rng: random.Random,
    patient: dict[str, Any],
    study_type: str,
    scanner: tuple[str, str, str, str],
    day: dt.date,
    seed: int,
    p: int,
    s: int,
) -> dict[str, Any]:
    age = max(0, (day - patient["_birth"]).days // 365)
    start = rng.uniform(7 * 3600, 19 * 3600)
    accession = f"A{seed % 10}{rng.randrange(10**8):08d}"
    code = {"CT": "CTABDPEL", "MR": "MRBRAIN", "PETCT": "PETCTWB", "CR": "XRCHEST2V", "DX": "XRKNEE2V"}[study_type]
    description = rng.choice(STUDY_DESCRIPTIONS[study_type])
    return {
        "StudyInstanceUID": uid(scanner[2] + ".30000", seed, "study", p, s),
        "StudyDate": _da(day),
        "StudyTime": _tm(start),
        "AccessionNumber": accession,
        "StudyID": str(rng.randrange(1, 99999)),
        "StudyDescription": description,
        "ReferringPhysicianName": rng.choice(PHYSICIANS),
        "InstitutionName": rng.choice(INSTITUTIONS),
        "PatientAge": f"{age:03d}Y",
        "BodyPartExamined": BODY_PART[study_type],
        "_code": code,
        "_type": study_type,
        "_start": start,
        "_day": day,
        "_folder": f"{_da(day)}_{study_type}_{accession}",
        "_frame": uid(scanner[2] + ".4", seed, "frame", p, s),
        "_contrast": study_type in ("CT", "MR") and rng.random() < 0.6,
    }


def _series(
    rng: random.Random,
    study: dict[str, Any],
    modality: str,
    kind: str,
    description: str,
    number: int,
    clock: float,
    scanner: tuple[str, str, str, str],
) -> dict[str, Any]:
    thickness = {
        "scout": 0.6,
        "axial": 5.0,
        "thin": rng.choice((0.625, 1.0, 1.25)),
        "coronal": 3.0,
        "ctac": 3.0,
        "localizer": 7.0,
        "t1": 4.0,
        "t2": 5.0,
        "flair": 5.0,
        "dwi": 4.0,
        "t1post": 1.0,
        "pet": 3.27,
        "pet_nac": 3.27,
    }.get(kind, 0.0)
    fov = {"CT": rng.uniform(320, 460), "MR": rng.choice((220.0, 230.0, 240.0)), "PT": 700.0}.get(modality, 430.0)
    z0 = rng.uniform(-50, 150) if modality in ("CT", "PT") else rng.uniform(-40, 40)
    return {
        "SeriesInstanceUID": uid(scanner[2] + ".2", study["StudyInstanceUID"], number),
        "SeriesNumber": str(number),
        "SeriesDescription": description,
        "_start": clock,
        "_thickness": thickness,
        "_fov": fov,
        "_z0": z0,
        "_kvp": rng.choice(("100", "120", "120", "140")) if modality == "CT" else "",
        "_mas": rng.randrange(80, 400),
        "_tr": rng.choice(("500", "2500", "4000", "9000")),
        "_te": rng.choice(("12", "85", "96", "120")),
        "_slope": rng.uniform(0.5, 8.0),
        "_dose": rng.uniform(250e6, 420e6),
    }


# ---------------------------------------------------------------------------------------------- writing


def _seq_item(**elements: Any) -> Dataset:
    item = Dataset()
    for keyword, value in elements.items():
        setattr(item, keyword, value)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _seq_item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _blob(rng: random.Random, size: int) -> bytes:
    """A vendor binary header look-alike: tagged name/value records, padded to an even length."""
    out = bytearray(b"SV10\x04\x03\x02\x01")
    names = ("EchoLinePosition", "ProtocolSliceNumber", "SliceNormalVector", "ImaCoilString", "TimeAfterStart")
    while len(out) < size:
        name = rng.choice(names).encode().ljust(64, b"\x00")
        value = f"{rng.uniform(-1000, 1000):.6f}".encode().ljust(24, b"\x00")
        out += name + struct.pack("<iiii", 1, 16, 3, 77) + value
    return bytes(out[: size - size % 2])


def _base_dataset(sp: SeriesPlan, rng: random.Random) -> Dataset:
    """The attributes every instance of the series shares."""
    patient, study, series = sp.patient, sp.study, sp.series
    manufacturer, model, root, software = sp.scanner
    ds = Dataset()
    ds.SpecificCharacterSet = patient["SpecificCharacterSet"]
    ds.ImageType = _image_type(sp)
    ds.SOPClassUID = SOP_CLASS[sp.modality]
    ds.StudyDate = study["StudyDate"]
    ds.SeriesDate = study["StudyDate"]
    ds.AcquisitionDate = study["StudyDate"]
    ds.ContentDate = study["StudyDate"]
    ds.StudyTime = study["StudyTime"]
    ds.SeriesTime = _tm(series["_start"])
    ds.AccessionNumber = study["AccessionNumber"]
    ds.Modality = sp.modality
    ds.Manufacturer = manufacturer
    ds.InstitutionName = study["InstitutionName"]
    ds.InstitutionAddress = "1 Hospital Road, Springfield"
    ds.ReferringPhysicianName = study["ReferringPhysicianName"]
    ds.StationName = f"{model.split()[0][:8].upper()}{sp.seed % 90 + 10}"
    ds.StudyDescription = study["StudyDescription"]
    ds.ProcedureCodeSequence = Sequence([_code(study["_code"], "L", study["StudyDescription"][:64])])
    ds.SeriesDescription = series["SeriesDescription"]
    ds.InstitutionalDepartmentName = "Radiology"
    ds.OperatorsName = "TECH^A"
    ds.ManufacturerModelName = model
    ds.ReferencedPerformedProcedureStepSequence = Sequence(
        [
            _seq_item(
                ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3",
                ReferencedSOPInstanceUID=uid(root + ".7", study["StudyInstanceUID"], "mpps"),
            )
        ]
    )
    ds.PatientName = patient["PatientName"]
    ds.PatientID = patient["PatientID"]
    ds.IssuerOfPatientID = patient["IssuerOfPatientID"]
    ds.PatientBirthDate = patient["PatientBirthDate"]
    ds.PatientSex = patient["PatientSex"]
    ds.PatientAge = study["PatientAge"]
    ds.PatientSize = patient["PatientSize"]
    ds.PatientWeight = patient["PatientWeight"]
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
        if keyword in patient:
            setattr(ds, keyword, patient[keyword])
    if study["_contrast"] and sp.kind in ("axial", "thin", "coronal", "t1post"):
        ds.ContrastBolusAgent = "Omnipaque 350" if sp.modality == "CT" else "Gadovist"
        ds.ContrastBolusVolume = "100" if sp.modality == "CT" else "7.5"
        ds.ContrastBolusRoute = "IV"
    ds.BodyPartExamined = study["BodyPartExamined"]
    ds.DeviceSerialNumber = f"{sp.seed % 99991:05d}"
    ds.SoftwareVersions = software
    ds.ProtocolName = f"{study['_code']} {series['SeriesDescription']}"[:64]
    ds.PatientPosition = "FFS" if sp.study["_type"] == "PETCT" else "HFS"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.SeriesInstanceUID = series["SeriesInstanceUID"]
    ds.StudyID = study["StudyID"]
    ds.SeriesNumber = series["SeriesNumber"]
    ds.AcquisitionNumber = "1"
    ds.FrameOfReferenceUID = study["_frame"]
    if sp.modality not in ("CR", "DX"):
        ds.PositionReferenceIndicator = ""
    ds.RequestAttributesSequence = Sequence(
        [
            _seq_item(
                RequestedProcedureID=study["AccessionNumber"],
                ScheduledProcedureStepID=study["AccessionNumber"] + "1",
                ScheduledProtocolCodeSequence=Sequence([_code(study["_code"], "L", study["StudyDescription"][:64])]),
            )
        ]
    )
    ds.PerformedProcedureStepStartDate = study["StudyDate"]
    ds.PerformedProcedureStepStartTime = study["StudyTime"]
    ds.PerformedProcedureStepID = study["StudyID"]
    if "LongitudinalTemporalInformationModified" in patient:
        ds.LongitudinalTemporalInformationModified = patient["LongitudinalTemporalInformationModified"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if sp.modality == "CR" else "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if sp.modality == "PT" else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if sp.modality == "CT" else 0
    ds.WindowCenter, ds.WindowWidth = {"CT": ("40", "400"), "MR": ("600", "1200"), "PT": ("5000", "10000")}.get(
        sp.modality, ("2048", "4096")
    )
    ds.RescaleIntercept = "-1024" if sp.modality == "CT" else "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = {"CT": "HU", "PT": "BQML"}.get(sp.modality, "US")
    MODALITY_ATTRIBUTES[sp.modality](ds, sp, rng)
    _add_private(ds, sp, rng)
    return ds


def _image_type(sp: SeriesPlan) -> list[str]:
    if sp.kind in ("scout", "localizer"):
        return ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    if sp.kind == "coronal":
        return ["DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"]
    if sp.modality == "CT":
        return ["ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]
    if sp.modality == "MR":
        return ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    if sp.modality == "PT":
        return ["ORIGINAL", "PRIMARY"]
    return ["ORIGINAL", "PRIMARY", "", ""]


def _add_ct(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    series = sp.series
    ds.ScanOptions = "TOPOGRAM" if sp.kind == "scout" else "HELICAL MODE"
    ds.SliceThickness = _ds(series["_thickness"])
    ds.KVP = series["_kvp"] or "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds(series["_fov"], 1)
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = _ds(rng.uniform(120, 190), 1)
    ds.RotationDirection = "CW"
    ds.ExposureTime = str(rng.choice((500, 750, 1000, 1800)))
    ds.XRayTubeCurrent = str(series["_mas"])
    ds.FilterType = "FLAT"
    ds.GeneratorPower = str(series["_mas"] * 12 // 100)
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = series["SeriesDescription"].split()[-1]
    ds.SpiralPitchFactor = 0.8
    ds.CTDIvol = round(rng.uniform(3, 25), 2)
    ds.CTDIPhantomTypeCodeSequence = Sequence([_code("113691", "DCM", "IEC Body Dosimetry Phantom")])
    ds.PixelPaddingValue = -2000  # SS, as the pixels are signed


def _add_mr(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    series = sp.series
    ds.ScanningSequence = ["SE"] if sp.kind in ("t1", "t2") else ["EP", "GR"] if sp.kind == "dwi" else ["GR", "IR"]
    ds.SequenceVariant = ["SK", "SP", "OSP"]
    ds.ScanOptions = ["PFP", "SAT1"] if sp.kind != "localizer" else ""
    ds.MRAcquisitionType = "3D" if sp.kind == "t1post" else "2D"
    ds.SequenceName = {"dwi": "*ep_b1000t", "t1post": "*tfl3d1_16ns", "flair": "*tir2d1_16"}.get(sp.kind, "*tse2d1_5")
    ds.AngioFlag = "N"
    ds.SliceThickness = _ds(series["_thickness"])
    ds.RepetitionTime = series["_tr"]
    ds.EchoTime = series["_te"]
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "123.255582"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = _ds(series["_thickness"] * 1.1, 2)
    ds.EchoTrainLength = "16"
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "87.5"
    ds.PixelBandwidth = "220"
    ds.ReceiveCoilName = "Head_32"
    ds.TransmitCoilName = "Body"
    ds.AcquisitionMatrix = [0, 320, 280, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = "150" if sp.kind in ("t2", "flair") else "9"
    ds.SAR = _ds(rng.uniform(0.1, 2.5), 4)
    ds.dBdt = "0"
    ds.ReconstructionDiameter = _ds(series["_fov"], 1)


def _add_pt(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    series = sp.series
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.DecayCorrection = "START"
    ds.ReconstructionMethod = "OSEM3D 3i21s" if sp.kind == "pet" else "OSEM3D 2i21s NAC"
    ds.CorrectedImage = ["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"] if sp.kind == "pet" else ["NORM", "DECY"]
    ds.SliceThickness = _ds(series["_thickness"])
    ds.ReconstructionDiameter = "700"
    ds.ActualFrameDuration = "180000"
    ds.NumberOfSlices = sp.count
    injection = series["_start"] - rng.uniform(3300, 3900)
    ds.RadiopharmaceuticalInformationSequence = Sequence(
        [
            _seq_item(
                Radiopharmaceutical="Fluorodeoxyglucose",
                RadiopharmaceuticalStartTime=_tm(injection),
                RadionuclideTotalDose=_ds(series["_dose"], 0),
                RadionuclideHalfLife="6586.2",
                RadionuclidePositronFraction="0.97",
                RadionuclideCodeSequence=Sequence([_code("C-111A1", "SRT", "^18^Fluorine")]),
                RadiopharmaceuticalCodeSequence=Sequence([_code("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")]),
            )
        ]
    )
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("F-10470", "SRT", "headfirst")])


def _add_cr(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    ds.KVP = rng.choice(("110", "125"))
    ds.ExposureTime = str(rng.randrange(5, 40))
    ds.XRayTubeCurrent = str(rng.randrange(200, 500))
    ds.Exposure = str(rng.randrange(2, 12))
    ds.DistanceSourceToDetector = "1800"
    ds.ImagerPixelSpacing = ["0.15", "0.15"]
    ds.ViewPosition = "PA" if "PA" in sp.series["SeriesDescription"] else "LL"
    ds.PlateID = f"{rng.randrange(10**6):06d}"
    ds.SensitivityValue = float(rng.randrange(100, 400))


def _add_dx(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    _add_cr(ds, sp, rng)
    del ds.PlateID, ds.SensitivityValue
    ds.ViewPosition = "AP" if "AP" in sp.series["SeriesDescription"] else "LAT"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorID = f"DET{rng.randrange(1000):03d}"
    ds.Laterality = rng.choice("RL")
    ds.AnatomicRegionSequence = Sequence([_code("T-D8500", "SRT", "Knee")])
    ds.EntranceDoseInmGy = _ds(rng.uniform(0.05, 0.4), 3)


MODALITY_ATTRIBUTES = {"CT": _add_ct, "MR": _add_mr, "PT": _add_pt, "CR": _add_cr, "DX": _add_dx}


def _add_private(ds: Dataset, sp: SeriesPlan, rng: random.Random) -> None:
    vendor = sp.scanner[0].split()[0].upper()
    if vendor == "GE":
        block = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
        block.add_new(0x02, "SH", "SIGNA" if sp.modality == "MR" else "CT")
        block.add_new(0x04, "SH", "HOSP")
        block.add_new(0x27, "SL", 1537271544 + sp.seed % 10**6)
        block.add_new(0xE3, "UI", uid(sp.scanner[2] + ".1", sp.seed, "equipment"))
        acq = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        for element in range(0x10, 0x60):
            acq.add_new(element, "DS", _ds(rng.uniform(-500, 500), 6))
        parm = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        parm.add_new(0x10, "US", 2)
        parm.add_new(0x39, "IS", ["1000", "0", "0", "0"])
        parm.add_new(0x6F, "DS", ["0", "0", "0", "0"])
    elif vendor == "SIEMENS":
        csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        csa.add_new(0x08, "CS", "IMAGE NUM 4")
        csa.add_new(0x09, "LO", "20180918")
        csa.add_new(0x10, "OB", _blob(rng, rng.randrange(4000, 8000)))
        csa.add_new(0x18, "CS", sp.modality)
        csa.add_new(0x19, "LO", "20180918")
        csa.add_new(0x20, "OB", _blob(rng, rng.randrange(6000, 12000)))
        hdr = ds.private_block(0x0019, "SIEMENS CT VA0  COAD" if sp.modality != "MR" else "SIEMENS MR HEADER", True)
        for element in range(0x08, 0x18):
            hdr.add_new(element, "DS", _ds(rng.uniform(0, 3000), 3))
    else:
        philips = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        philips.add_new(0x01, "FL", rng.uniform(0, 1000))
        philips.add_new(0x08, "SS", 1)
        philips.add_new(0x0B, "CS", "TRANSVERSAL")
        philips.add_new(0x5F, "SQ", Sequence([_seq_item(StackID="1", NumberOfFrames=sp.count)]))
        if sp.modality == "MR":
            mr = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
            for element in range(0x10, 0x40):
                mr.add_new(element, "FL", rng.uniform(-100, 100))
        else:
            elscint = ds.private_block(0x01F1, "ELSCINT1", create=True)
            elscint.add_new(0x01, "CS", "HELICAL")
            elscint.add_new(0x26, "DS", "0.671875")
            elscint.add_new(0x27, "DS", "0.5")
            for element in range(0x40, 0x60):
                elscint.add_new(element, "DS", _ds(rng.uniform(0, 1000), 3))


def _pixels(sp: SeriesPlan, i: int) -> bytes:
    """A 64x64 16-bit little endian phantom: a disc whose radius varies along the series."""
    n = max(1, sp.count)
    radius = 8 + 20 * math.sin(math.pi * (i + 0.5) / n)
    outside, background, inside = {
        "CT": (-2000, 0, 1064),  # padding, air (-1024 HU), soft tissue (+40 HU)
        "MR": (0, 0, 900),
        "PT": (0, 40, 2500 + i % 97),
    }.get(sp.modality, (0, 300, 3000))
    fmt = "<h" if sp.modality == "CT" else "<H"
    pad, bg, fg = (struct.pack(fmt, v) for v in (outside, background, inside))
    rows = []
    for y in range(ROWS):
        dy = y - ROWS / 2 + 0.5
        fov_half = int(math.sqrt(max(0.0, (ROWS / 2) ** 2 - dy * dy)))
        half = int(math.sqrt(max(0.0, radius * radius - dy * dy)))
        side = COLUMNS // 2 - fov_half
        rows.append(pad * side + bg * (fov_half - half) + fg * (2 * half) + bg * (fov_half - half) + pad * side)
    return b"".join(rows)


def _write_series(sp: SeriesPlan, out: str) -> tuple[int, int]:
    """Write every instance of one series; returns (files, bytes)."""
    rng = random.Random(sp.seed)
    ds = _base_dataset(sp, rng)
    folder = os.path.join(out, sp.folder)
    os.makedirs(folder, exist_ok=True)
    series = sp.series
    root = sp.scanner[2]
    if sp.modality not in ("CR", "DX"):
        spacing = series["_fov"] / COLUMNS
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    step = series["_thickness"] * (1.0 if sp.kind != "dwi" else 1.1)
    orientation = {
        "coronal": ["1", "0", "0", "0", "0", "-1"],
        "t1": ["0", "1", "0", "0", "0", "-1"],
        "t1post": ["0", "1", "0", "0", "0", "-1"],
    }.get(sp.kind, ["1", "0", "0", "0", "1", "0"])
    refs = Sequence(
        [
            _seq_item(ReferencedSOPClassUID=SOP_CLASS[sp.modality], ReferencedSOPInstanceUID=uid(root, sp.seed, k))
            for k in range(2)
        ]
    )
    total = 0
    for i in range(sp.count):
        number = i + 1
        sop = uid(root + ".1", series["SeriesInstanceUID"], number)
        seconds = series["_start"] + (i * 0.35 if sp.modality != "MR" else i * 2.5)
        ds.SOPInstanceUID = sop
        ds.AcquisitionTime = _tm(seconds)
        ds.ContentTime = _tm(seconds + 12)
        ds.InstanceNumber = str(number)
        if sp.modality not in ("CR", "DX"):
            offset = series["_z0"] - i * step
            corner = -series["_fov"] / 2
            if sp.kind == "coronal":
                position = [_ds(corner), _ds(offset - 100), _ds(-corner + 20)]
            elif sp.kind in ("t1", "t1post"):
                position = [_ds(offset), _ds(corner), _ds(-corner)]
            else:
                position = [_ds(corner), _ds(corner + 20), _ds(offset)]
            ds.ImagePositionPatient = position
            ds.ImageOrientationPatient = orientation
            ds.SliceLocation = _ds(offset, 3)
            if sp.modality == "MR" and sp.kind != "localizer":
                ds.ReferencedImageSequence = refs
            if sp.modality == "PT":
                slope = series["_slope"] * (0.6 + 0.8 * rng.random())
                ds.RescaleSlope = _ds(slope, 6)
                ds.ImageIndex = number
        ds.PixelData = _pixels(sp, i)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        path = os.path.join(folder, f"IM{number:05d}.dcm")
        dcmwrite(path, ds, enforce_file_format=True)
        total += os.path.getsize(path)
    return sp.count, total


def _work(args: tuple[SeriesPlan, str]) -> tuple[int, int]:
    return _write_series(*args)


def _tasks(plan: Plan, out: str) -> Iterator[tuple[SeriesPlan, str]]:
    # Largest series first, so that the pool ends with small tasks and no core idles at the end.
    for sp in sorted(plan.series, key=lambda s: -s.count):
        yield sp, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, required=True, help="number of DICOM files to write (1000-100000)")
    parser.add_argument("--out", required=True, help="output folder (must be empty or absent, see --force)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="writer processes (default: all)")
    parser.add_argument("--force", action="store_true", help="delete the output folder first if it is not empty")
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("--files must be at least 1")
    if os.path.isdir(args.out) and os.listdir(args.out):
        if not args.force:
            parser.error(f"{args.out} is not empty (use --force to replace it)")
        shutil.rmtree(args.out)
    os.makedirs(args.out, exist_ok=True)

    # A value that does not fit its VR is a bug of this script: fail instead of writing it (workers inherit this).
    warnings.simplefilter("error")
    start = time.perf_counter()
    plan = plan_corpus(args.files, args.seed)
    files = size = 0
    with multiprocessing.get_context("fork").Pool(max(1, args.jobs)) as pool:
        for n, b in pool.imap_unordered(_work, _tasks(plan, args.out), chunksize=1):
            files, size = files + n, size + b
    seconds = time.perf_counter() - start

    modalities = Counter()
    for sp in plan.series:
        modalities[sp.modality] += sp.count
    by_modality = ", ".join(f"{m} {modalities[m]}" for m in sorted(modalities))
    print(
        f"gen_corpus: wrote {files} files, {plan.patients} patients, {plan.studies} studies, "
        f"{len(plan.series)} series, {size} bytes ({size / 2**20:.1f} MiB) to {args.out} "
        f"in {seconds:.1f} s (seed {args.seed}; files per modality: {by_modality})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
