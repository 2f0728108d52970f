"""HTTP blueprints, one per resource. Views parse, call the domain, serialise."""

from __future__ import annotations

from typing import Any

import flask_smorest
from flask import Flask
from webargs.core import is_json
from webargs.flaskparser import FlaskParser, abort

from ..extensions import rest_api
from ..schemas import ErrorSchema


class Parser(FlaskParser):
    """webargs, with the contract's statuses: 400 for bad input, 415 for a non-JSON body."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: Any, schema: Any) -> Any:
        if not is_json(req.mimetype):
            abort(415, message="the body must be application/json")
        return super().load_json(req, schema)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()


def register_blueprints(app: Flask) -> None:
    from . import admin_tickets, admin_users, agent_tickets, auth, ops

    rest_api.ERROR_SCHEMA = ErrorSchema
    for module in (auth, admin_users, admin_tickets, agent_tickets):
        rest_api.register_blueprint(module.blp)
    app.register_blueprint(ops.bp)
