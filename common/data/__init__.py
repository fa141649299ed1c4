"""Where an agent's examples come from: the shared data sets, a site's own files, the input
spec, class-incremental streams, the probe set and the public evaluation set."""
