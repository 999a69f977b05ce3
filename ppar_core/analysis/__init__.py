"""Reliability analysis of a PPAR run: the report shape (`report`), the statistics and weight maps (`weights`), and
their pictures (`plots`, matplotlib optional)."""
