-- dicom-db schema. The user's four tables keep every column name and type of seed-schema.sql; what the
-- project adds is marked "added". Identifiers are quoted so that PostgreSQL keeps their case.
-- This file is run as is on SQLite; ingest/db.py adapts the one SQLite-only phrase
-- (INTEGER PRIMARY KEY AUTOINCREMENT) for PostgreSQL.

CREATE TABLE IF NOT EXISTS "Patient" (
    "PatientID" TEXT PRIMARY KEY,
    "PatientName" TEXT,
    "PatientSex" TEXT,
    "PatientAge" TEXT,
    "PatientBirthDate" TEXT,
    "PatientIdentityRemoved" TEXT,
    "DeIdentificationMethod" TEXT,
    "LastMenstrualDate" TEXT,
    -- added: 1 when the files carried no PatientID and the ID was made from the StudyInstanceUID
    "PatientIDGenerated" INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS "Study" (
    "StudyInstanceUID" TEXT PRIMARY KEY,
    "PatientID" TEXT,
    "StudyDescription" TEXT,
    "StudyDate" TEXT,
    "StudyTime" TEXT,
    "StudyID" TEXT,
    "SeriesDate" TEXT,
    "ReferringPhysicianName" TEXT,
    -- added: the first 128 bits of SHA-256 of the UID in hex (ingest/db.py uid_hash), indexed: a de-identified
    -- client's pseudonymous UID is turned back into this digest (api/masking.py), then the row is an index seek
    "StudyInstanceUIDHash" TEXT,
    FOREIGN KEY ("PatientID") REFERENCES "Patient" ("PatientID")
);

CREATE TABLE IF NOT EXISTS "Series" (
    "SeriesInstanceUID" TEXT PRIMARY KEY,
    "StudyInstanceUID" TEXT,
    "SeriesDescription" TEXT,
    "Modality" TEXT,
    "SliceThickness" TEXT,
    "PixelSpacing" TEXT,
    "ImagePositionPatient" TEXT,
    "ImageOrientationPatient" TEXT,
    "Rows" INTEGER,
    "Columns" INTEGER,
    "ImageType" TEXT,
    "AcquisitionNumber" TEXT,
    "InstanceNumber" TEXT,
    "PatientPosition" TEXT,
    "ExposureTime" INTEGER,
    "KVP" REAL,
    "TableHeight" REAL,
    "SliceLocation" REAL,
    "BodyPartExamined" TEXT,
    "ScanOptions" TEXT,
    "ReconstructionDiameter" REAL,
    "DistanceSourceToPatient" REAL,
    "GantryDetectorTilt" REAL,
    "RotationDirection" TEXT,
    "ConvolutionKernel" TEXT,
    -- added: the series' per-image columns come from its representative instance, the one with the
    -- smallest (InstanceNumber, SOPInstanceUID); this key orders candidates (see ingest/reader.py)
    "RepresentativeKey" TEXT,
    -- added: SliceThickness as a number, so that filters compare numbers, not text
    "SliceThicknessValue" REAL,
    -- added: digest of the SeriesInstanceUID, as Study's
    "SeriesInstanceUIDHash" TEXT,
    FOREIGN KEY ("StudyInstanceUID") REFERENCES "Study" ("StudyInstanceUID")
);

CREATE TABLE IF NOT EXISTS "SliceMetadata" (
    "SliceID" INTEGER PRIMARY KEY AUTOINCREMENT,
    "SeriesInstanceUID" TEXT,
    "AcquisitionDate" TEXT,
    "AcquisitionTime" TEXT,
    "ContrastBolusAgent" TEXT,
    "AccessionNumber" TEXT,
    "SliceNumber" INTEGER,
    "SliceLocation" REAL,
    "SliceThickness" REAL,
    "PixelPaddingValue" INTEGER,
    "RescaleIntercept" REAL,
    "RescaleSlope" REAL,
    "LongitudinalTemporalInfo" TEXT,
    -- added: one row per DICOM instance
    "SOPInstanceUID" TEXT NOT NULL UNIQUE,
    "SOPClassUID" TEXT,
    "ImagePositionPatient" TEXT,
    -- added: digest of the SOPInstanceUID, as Study's
    "SOPInstanceUIDHash" TEXT,
    FOREIGN KEY ("SeriesInstanceUID") REFERENCES "Series" ("SeriesInstanceUID")
);

-- added: one row per file seen by dicom-ingest, so that a re-run skips unchanged files without parsing
-- them (same path, size, mtime, inode and ctime) and knows which file holds which instance.
-- Path: the file's absolute path; a name that is not UTF-8 is stored as "bytes:" + escapes (ingest/paths.py).
CREATE TABLE IF NOT EXISTS "SourceFile" (
    "Path" TEXT PRIMARY KEY,
    "Size" BIGINT NOT NULL,
    "MtimeNs" BIGINT NOT NULL,
    -- ingested (the file the instance's row comes from) | duplicate (holds an instance another file owns)
    -- | not_dicom | failed
    "Status" TEXT NOT NULL,
    "SOPInstanceUID" TEXT,
    "Reason" TEXT,
    "Inode" BIGINT,
    "CtimeNs" BIGINT,
    -- the file's Patient and Study values (SourceHeader) and a hash of everything read from it
    "Header" TEXT,
    "ContentHash" TEXT
);

-- added: the Patient and Study values files carry, once per distinct set (a few per study), so that the
-- Patient and Study rows can be derived again from the files that are on disk whenever those change.
CREATE TABLE IF NOT EXISTS "SourceHeader" (
    "Hash" TEXT PRIMARY KEY,
    "PatientID" TEXT NOT NULL,
    "StudyInstanceUID" TEXT NOT NULL,
    -- JSON arrays of the values, in the column order of ingest/db.py PATIENT_FIELDS and STUDY_FIELDS
    "Patient" TEXT NOT NULL,
    "Study" TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS "idx_study_patient" ON "Study" ("PatientID");
CREATE INDEX IF NOT EXISTS "idx_study_date" ON "Study" ("StudyDate");
CREATE INDEX IF NOT EXISTS "idx_series_study" ON "Series" ("StudyInstanceUID");
CREATE INDEX IF NOT EXISTS "idx_series_modality" ON "Series" ("Modality");
CREATE INDEX IF NOT EXISTS "idx_series_body_part" ON "Series" ("BodyPartExamined");
CREATE INDEX IF NOT EXISTS "idx_series_thickness" ON "Series" ("SliceThicknessValue");
CREATE INDEX IF NOT EXISTS "idx_slice_series" ON "SliceMetadata" ("SeriesInstanceUID", "SliceNumber");
CREATE INDEX IF NOT EXISTS "idx_slice_location" ON "SliceMetadata" ("SliceLocation");
CREATE INDEX IF NOT EXISTS "idx_slice_thickness" ON "SliceMetadata" ("SliceThickness");
CREATE INDEX IF NOT EXISTS "idx_slice_accession" ON "SliceMetadata" ("AccessionNumber");
CREATE INDEX IF NOT EXISTS "idx_patient_name" ON "Patient" ("PatientName");
CREATE INDEX IF NOT EXISTS "idx_patient_sex" ON "Patient" ("PatientSex");
CREATE INDEX IF NOT EXISTS "idx_study_uid_hash" ON "Study" ("StudyInstanceUIDHash");
CREATE INDEX IF NOT EXISTS "idx_series_uid_hash" ON "Series" ("SeriesInstanceUIDHash");
CREATE INDEX IF NOT EXISTS "idx_slice_uid_hash" ON "SliceMetadata" ("SOPInstanceUIDHash");
CREATE INDEX IF NOT EXISTS "idx_sourcefile_sop" ON "SourceFile" ("SOPInstanceUID");
CREATE INDEX IF NOT EXISTS "idx_sourcefile_header" ON "SourceFile" ("Header");
CREATE INDEX IF NOT EXISTS "idx_sourceheader_study" ON "SourceHeader" ("StudyInstanceUID");
CREATE INDEX IF NOT EXISTS "idx_sourceheader_patient" ON "SourceHeader" ("PatientID");
