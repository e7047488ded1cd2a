"""Scrape benchmark: cost of fetching and parsing a model server's /metrics page."""
