"""The settings table, loading and validation, the storescp command line, DCMTK's profile and logger formats, the generated option and conformance documents."""
