"""The node-facing side of the service: what a machine fetches while it network-boots
(iPXE scripts, kernels and initrds, installer answer files) and the callbacks its
installer makes. These routes take no API token; a deployment's one-time token is the
only credential a node ever holds."""
