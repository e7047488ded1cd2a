"""Collector benchmark: the picker's scrape loop against 100 endpoints serving realistic pages."""
