"""The thin Dask layer: the task graph of kernel calls, and the clusters it runs on."""
