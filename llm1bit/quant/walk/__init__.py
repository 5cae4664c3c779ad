"""The one layer walk: find a model's decoder stack and its quantizable linears, run calibration windows
through it layer by layer and yield each layer's inputs and Hessians. `quantize` and the sensitivity
measurement of `bits` both consume it."""
