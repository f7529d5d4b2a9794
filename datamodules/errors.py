"""The one error type of bad input data: run.py prints it in one line and exits with code 2."""


class DataError(ValueError):
    """Input data that cannot be used as given. The message names the file, the field and what was
    expected, e.g. ``patches.h5: 11 barcodes but 23 images (expected one barcode per image)``."""
