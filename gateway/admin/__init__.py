"""The admin REST API (``/admin/v1``) and the status page (``/admin/``).

Each module declares its operations on :data:`gateway.admin.api.ADMIN` with their request and
response models; the same declarations route the requests, check the admin token and write
the OpenAPI document (``/admin/v1/openapi.json``), so the contract cannot drift from the code.
"""
