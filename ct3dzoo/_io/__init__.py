"""File and network IO below the model layer: atomic writes, checkpoint reading, the
weights cache, downloads and Hub transport. Imports nothing above itself."""
