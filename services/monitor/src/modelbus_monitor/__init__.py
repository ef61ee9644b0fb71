"""modelbus monitor: joins predictions with labels, runs drift detectors, opens incidents."""
