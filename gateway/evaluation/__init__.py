"""`ir-gateway eval`: measure how often a running gateway returns a valid answer, per schema
and output policy, over a written prompt set (issue 19, part 5).

`runner` sends the requests (bounded concurrency, the policy chosen per request with the
`x-irgw-output-policy` header) and classifies each answer; `report` turns the results into
a Markdown report and a PNG plot; `cli` is the command.
"""
