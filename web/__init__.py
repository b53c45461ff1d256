"""HTTP views on the Faust web server: ingestion, health, and (later) the query API."""
