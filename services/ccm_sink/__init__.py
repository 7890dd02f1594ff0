"""Reference consumers of ccm-tally's outputs (``ccm-tally sink postgres``)."""
