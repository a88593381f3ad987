"""The data model shared by the ingest and the API: the column registry (`dicom_db.model.registry`)."""
