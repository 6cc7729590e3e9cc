"""DRF's JSON parser, with a 400 for JSON nested too deeply to read (Python's parser runs
out of recursion: a RecursionError, which DRF would answer as a 500)."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
