"""The feature store: shard writer, index, reader, merge, verify, export."""
