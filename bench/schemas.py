"""Twenty structured-output tasks: a question and the JSON Schema its answer must follow.

Shared by the structured-output bench (bench/structured.py: parse rates with
and without the constraint, and the constrained decode speed) and the
default-model test that every constrained answer parses. Plain data: no torch,
no Django. The schemas cover what programs send: pydantic-style objects with
`$defs` and optional fields, enums, bounded numbers, arrays, patterns,
formats and nesting. Strings and arrays are bounded so a 135M model's answer
fits its token budget.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _object(properties: dict[str, Schema], required: list[str] | None = None, **more: Any) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **more,
    }


def _text(most: int = 40) -> Schema:
    return {"type": "string", "maxLength": most}


TASKS: list[tuple[str, Schema]] = [
    ("Give the capital of France and its country as JSON.", _object({"city": _text(), "country": _text()})),
    (
        "Describe a person with a name, an age and whether they are a student.",
        _object(
            {
                "name": _text(),
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "student": {"type": "boolean"},
            }
        ),
    ),
    (
        "Classify the sentiment of: 'I love this phone, the battery lasts all day.'",
        _object(
            {
                "sentiment": {"enum": ["positive", "negative", "neutral"]},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            }
        ),
    ),
    (
        "List three fruits.",
        _object({"fruits": {"type": "array", "items": _text(20), "minItems": 3, "maxItems": 3}}),
    ),
    (
        "Extract the date and the place from: 'We met in Lisbon on 2024-05-17.'",
        _object({"date": {"type": "string", "format": "date"}, "place": _text()}),
    ),
    (
        "Give a recipe title with its ingredients, each with a quantity in grams.",
        _object(
            {
                "title": _text(),
                "ingredients": {
                    "type": "array",
                    "items": _object(
                        {"name": _text(20), "grams": {"type": "integer", "minimum": 1, "maximum": 5000}}
                    ),
                    "minItems": 1,
                    "maxItems": 4,
                },
            }
        ),
    ),
    (
        "Rate the movie 'Inception' from 1 to 5 stars with a one-line review.",
        _object({"stars": {"type": "integer", "minimum": 1, "maximum": 5}, "review": _text(80)}),
    ),
    (
        "Give the colour of the sky on a clear day as a hex code.",
        _object({"colour": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}}),
    ),
    (
        "Translate 'good morning' into Spanish and French.",
        _object({"spanish": _text(), "french": _text()}),
    ),
    (
        "Is 17 a prime number? Answer with a boolean and a short reason.",
        _object({"prime": {"type": "boolean"}, "reason": _text(80)}),
    ),
    (
        "Describe a book: its title, its author and, if you know it, the year it came out.",
        {
            "$defs": {"Author": _object({"name": _text()})},
            **_object(
                {
                    "title": _text(),
                    "author": {"$ref": "#/$defs/Author"},
                    "year": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2100}, {"type": "null"}]},
                },
                required=["title", "author"],
            ),
        },
    ),
    (
        "Give the coordinates of Paris.",
        _object(
            {
                "latitude": {"type": "number", "minimum": -90, "maximum": 90},
                "longitude": {"type": "number", "minimum": -180, "maximum": 180},
            }
        ),
    ),
    (
        "Summarise in one sentence: 'The meeting moved to Friday because the room was booked.'",
        _object({"summary": _text(100)}),
    ),
    (
        "Pick the odd one out of cat, dog, car and cow, and say which category the rest belong to.",
        _object({"odd_one_out": {"enum": ["cat", "dog", "car", "cow"]}, "category": _text(20)}),
    ),
    (
        "Make a to-do list of two tasks for a Monday, each with a priority.",
        _object(
            {
                "tasks": {
                    "type": "array",
                    "items": _object({"task": _text(40), "priority": {"enum": ["low", "medium", "high"]}}),
                    "minItems": 2,
                    "maxItems": 2,
                }
            }
        ),
    ),
    (
        "What is 12 times 7? Give the answer as a number.",
        _object({"answer": {"type": "integer", "minimum": 0, "maximum": 1000}}),
    ),
    (
        "Give a user profile with a username of lowercase letters and an email address.",
        _object(
            {
                "username": {"type": "string", "pattern": "^[a-z]{3,12}$"},
                "email": {"type": "string", "format": "email"},
            }
        ),
    ),
    (
        "Forecast tomorrow's weather: the condition and the high and low temperatures in Celsius.",
        _object(
            {
                "condition": {"enum": ["sunny", "cloudy", "rainy", "snowy", "windy"]},
                "high_c": {"type": "integer", "minimum": -50, "maximum": 60},
                "low_c": {"type": "integer", "minimum": -50, "maximum": 60},
            }
        ),
    ),
    (
        "Name a programming language, the year it appeared and two of its features.",
        _object(
            {
                "language": _text(20),
                "year": {"type": "integer", "minimum": 1940, "maximum": 2030},
                "features": {"type": "array", "items": _text(30), "minItems": 2, "maxItems": 2},
            }
        ),
    ),
    (
        "Give an address with a street, a city and a postal code.",
        _object(
            {
                "address": _object(
                    {
                        "street": _text(),
                        "city": _text(),
                        "postal_code": {"type": "string", "pattern": "^[0-9]{5}$"},
                    }
                )
            }
        ),
    ),
]


# Function calling: four tools and ten questions, each of which one of them answers.
TOOLS: list[Schema] = [
    {
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "parameters": _object({"city": _text(), "days": {"type": "integer", "minimum": 1, "maximum": 7}}),
    },
    {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": _object(
            {"timezone": {"type": "string", "pattern": "^[A-Za-z_]{1,20}/[A-Za-z_]{1,20}$"}}
        ),
    },
    {
        "name": "convert_currency",
        "description": "Convert an amount of money from one currency to another",
        "parameters": _object(
            {
                "amount": {"type": "number", "minimum": 0, "maximum": 1000000},
                "source": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "target": {"type": "string", "pattern": "^[A-Z]{3}$"},
            }
        ),
    },
    {
        "name": "search_web",
        "description": "Search the web",
        "parameters": _object({"query": _text(80)}),
    },
]
TOOL_QUESTIONS: list[str] = [
    "What will the weather be in Paris for the next 3 days?",
    "Is it going to rain in London tomorrow?",
    "What time is it in Tokyo right now?",
    "What is the current time in America/New_York?",
    "How much is 100 US dollars in euros?",
    "Convert 2500 JPY to GBP.",
    "Search the web for the latest Django release.",
    "Find news about the James Webb telescope.",
    "What's the forecast for Berlin this week?",
    "How many Swiss francs do I get for 50 EUR?",
]
