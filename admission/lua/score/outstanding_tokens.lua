-- Placement scorer: the tokens fairgate has in flight on the backend (its own estimates of
-- every request it granted there, across replicas). A backend's load is the largest of its
-- scorers' figures; the pickers prefer the least loaded.
local function score_outstanding_tokens(v)
  return v.tokens
end
