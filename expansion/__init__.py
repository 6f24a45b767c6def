"""Expansion modules shipped with misp-enrich, one OSINT source each."""
