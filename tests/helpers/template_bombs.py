"""Templates that exhaust a renderer: each with a pattern for what its refusal names.

Sized just past the sandbox's limits, so that code without the limits renders them in
seconds (and the tests fail there) rather than hanging.
"""

from __future__ import annotations

from app.mail.budget import MAX_LOOP_ITERATIONS
from app.mail.guards import MAX_TEXT_LENGTH

OVER = MAX_TEXT_LENGTH + 10_000_000
"""Characters just past the limit of one value."""

BOMBS = {
    f"{{{{ 'x'.ljust({OVER}) }}}}": "padded text too long",
    f"{{{{ 'x'.rjust({OVER}) }}}}": "padded text too long",
    f"{{{{ 'x'.center({OVER}) }}}}": "padded text too long",
    f"{{{{ '1'.zfill({OVER}) }}}}": "padded text too long",
    "{{ '{:>5000}'.format(1) }}": "format width too large",
    "{{ '{:>{w}}'.format(1, w=5) }}": "no nested replacement fields",
    "{{ '{}'.format([[1] * 100000] * 60) }}": "format argument too long",
    "{{ ('x' * 100000).replace('x', 'y' * 300) }}": "replaced text too long",
    "{{ ('x' * 1000).replace('', 'y' * 99999) }}": "replaced text too long",
    "{{ ('\\t' * 100000).expandtabs(300) }}": "expanded text too long",
    "{{ '%5000s' % 1 }}": "format width too large",
    "{{ '%(a)5000s' % {'a': 1} }}": "format width too large",
    "{{ '%s' % ([[1] * 100000] * 60,) }}": "format argument too long",
    "{{ '%5000s'|format(1) }}": "format width too large",
    f"{{{{ 'x'|center({OVER}) }}}}": "padded text too long",
    "{{ ('x\\n' * 50000)|indent(600) }}": "indented text too long",
    "{{ ('x ' * 50000)|wordwrap(1, wrapstring='y' * 600) }}": "wrapped text too long",
    "{{ range(100000)|join('x' * 300) }}": "joined text too long",
    "{{ ('x' * 300).join('y' * 100000) }}": "joined text too long",
    "{{ ('x' * 1000).translate({120: 'y' * 30000}) }}": "translated text too long",
    f"{{{{ (1).to_bytes({OVER}, 'big') }}}}": "bytes too long",
    "{{ [1]|batch(1000000, 'x')|list }}": "linecount too large",
    "{{ [1]|slice(1000000)|list }}": "slices too large",
    "{{ {'a': 1}|tojson(indent=1000) }}": "indent too large",
    "{{ ([[1] * 100000] * 210)|sum(start=[]) }}": "sum too long",
    "{{ [[1] * 100000] * 60 }}": "output too long",
    "{{ ([[1] * 100000] * 60)|pprint }}": "text too long",
    "{{ ([[1] * 100000] * 60)|string }}": "text too long",
    "{% set a = 'x' * 100000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}"
    "{% set e = d ~ d %}{% set f = e ~ e %}{% set g = f ~ f %}{% set h = g ~ g %}"
    "{% set i = h ~ h %}{{ i|length }}": "concatenation too long",
    "{% set a = 'x' * 100000 %}{% set b = a + a %}{% set c = b + b %}{% set d = c + c %}"
    "{% set e = d + d %}{% set f = e + e %}{% set g = f + f %}{% set h = g + g %}"
    "{% set i = h + h %}{{ i|length }}": "sum too long",
    "{% set ns = namespace(x=2 ** 2000) %}{% for i in range(40) %}"
    "{% set ns.x = ns.x * ns.x %}{% endfor %}{{ ns.x > 0 }}": "product too large",
    "{% for i in range(2000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}": (
        f"loops ran more than {MAX_LOOP_ITERATIONS:,} iterations"
    ),
    "{% for x in [[1] * 1500] * 1500 recursive %}{{ loop(x) if x is iterable else '' }}"
    "{% endfor %}": "iterations|ran longer than",  # whichever comes first
    "{% set a = 'x' * 100000 %}{% set b %}{% for i in range(100000) %}{{ a }}{% endfor %}"
    "{% endset %}{{ b|length }}": "produced more than",
}
"""Source → a pattern for what its refusal names."""

TIME_BOMB = (
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(22) }}"
)
"""4 million macro calls: no single limit stops it, only the render's deadline (and old code
needed many seconds for it, on the event loop)."""
