"""What the OpenAPI document says beyond what flask-smorest derives from the schemas.

The schemas stay the validators; this module only changes how they are
documented, so that a generated client has one type per concept and never
sends what the server refuses:

- each of the API's fixed sets (a ``schemas.Choice`` subclass) is one enum
  component, and every field of that set refers to it;
- a ``schemas.Documented`` schema adds its ``document_keywords`` (a PATCH's
  ``minProperties``), or is documented as its ``document_one_of`` union.
"""

from __future__ import annotations

import inspect
from typing import Any

import marshmallow
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter

from ..schemas import Choice, Documented, OneOf

# What a field may say about itself beside the enum it refers to.
_ANNOTATIONS = ("description",)


def _summary(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line; the rest is for developers."""
    first = (inspect.getdoc(cls) or "").split("\n\n")[0]
    return " ".join(first.split())


class Converter(OpenAPIConverter):
    """apispec's converter from marshmallow to OpenAPI, with the rules above."""

    def field2property(self, field: marshmallow.fields.Field) -> dict[str, Any]:
        if isinstance(field, marshmallow.fields.Nested) and field.allow_none:
            return self._nullable_reference(super().field2property(field))
        if not isinstance(field, Choice):
            return super().field2property(field)
        reference = self._enum_component(type(field))
        more = {key: field.metadata[key] for key in _ANNOTATIONS if key in field.metadata}
        if field.only is not None:
            more["enum"] = list(field.only)
        if field.allow_none:
            more["nullable"] = True
        # In OpenAPI 3.0 a $ref has no siblings: a narrowed or annotated use wraps it.
        return {"allOf": [reference], **more} if more else reference

    @staticmethod
    def _nullable_reference(prop: dict[str, Any]) -> dict[str, Any]:
        """A nested schema or null, as OpenAPI 3.0 says it (``allOf`` the reference,
        ``nullable``), rather than apispec's ``anyOf`` with an untyped object, which a
        generated client would make a model of its own."""
        choices = prop.get("anyOf", [])
        if len(choices) == 2 and choices[1] == {"type": "object", "nullable": True}:
            rest = {key: value for key, value in prop.items() if key != "anyOf"}
            return {"allOf": [choices[0]], "nullable": True, **rest}
        return prop

    def _enum_component(self, choice: type[Choice]) -> dict[str, Any]:
        name = choice.__name__
        if name not in self.spec.components.schemas:
            description = _summary(choice)
            self.spec.components.schema(
                name, {"type": "string", "enum": list(choice.values), "description": description}
            )
        reference: dict[str, Any] = self.spec.components.get_ref("schema", name)
        return reference

    def _field2parameter(
        self, field: marshmallow.fields.Field, *, name: str, location: str
    ) -> dict[str, Any]:
        parameter: dict[str, Any] = super()._field2parameter(field, name=name, location=location)
        # The parameter took the description; what is left of a wrapped
        # reference is the reference itself.
        schema = parameter.get("schema", {})
        if list(schema) == ["allOf"] and len(schema["allOf"]) == 1:
            parameter["schema"] = schema["allOf"][0]
        return parameter

    def schema2jsonschema(self, schema: Any) -> dict[str, Any]:
        cls = schema if isinstance(schema, type) else type(schema)
        if not issubclass(cls, Documented):
            document: dict[str, Any] = super().schema2jsonschema(schema)
            return document
        if cls.document_one_of is not None:
            return self._one_of(cls.document_one_of)
        document = super().schema2jsonschema(schema)
        document.update(cls.document_keywords)
        return document

    def _one_of(self, union: OneOf) -> dict[str, Any]:
        references = {
            value: self.resolve_nested_schema(shape) for value, shape in union.mapping.items()
        }
        return {
            "oneOf": list(references.values()),
            "discriminator": {
                "propertyName": union.discriminator,
                "mapping": {value: ref["$ref"] for value, ref in references.items()},
            },
        }


class DocumentPlugin(MarshmallowPlugin):
    """flask-smorest's marshmallow plugin, converting with ``Converter``."""

    Converter = Converter
