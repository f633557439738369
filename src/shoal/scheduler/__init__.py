"""Deciding what runs where: task specs, resource accounting, dispatch order.

``task``: the task spec and its wire form. ``resources``: a node's resources
with GPU instances (fractional GPUs packed onto one device). Neither does I/O.
"""
