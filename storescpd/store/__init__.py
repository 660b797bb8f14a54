"""What happens to a received object: staging, inspection, naming, durable publish, re-encoding, study folders, hooks."""
