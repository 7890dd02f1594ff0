"""The care-team console: a worklist over the compacted status topic (``ccm-tally console``)."""
