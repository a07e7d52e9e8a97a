"""Floor 4: running study notebooks (papermill, nbconvert), their shared sections, the index page."""
