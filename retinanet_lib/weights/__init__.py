"""Weights shipped with the library (see `retinanet_lib.pretrain`)."""
