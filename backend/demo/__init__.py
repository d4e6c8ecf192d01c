"""The community-day demo: every real component end to end, with a report."""
