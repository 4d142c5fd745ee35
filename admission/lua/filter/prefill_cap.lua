-- Placement filter: on a backend with a prefill cap (``max_prefill_tokens``, "mp"), long
-- prefills run one after another, never all at once: the prompt tokens still in prefill there
-- plus this request's stay within the cap, or nothing is in prefill.
local function filter_prefill_cap(v, r)
  if not v.cfg.mp then return true end
  return v.prefill + (r.pt or 0) <= v.cfg.mp or v.prefill == 0
end
