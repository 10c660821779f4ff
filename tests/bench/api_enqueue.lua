-- wrk script for POST /v1/jobs: one diag.noop job per request, or JOBS_PER_REQUEST of them in a batch.
local jobs = tonumber(os.getenv("JOBS_PER_REQUEST") or "1")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CONVEYOR_BENCH_TOKEN")
if jobs == 1 then
    wrk.body = '{"type":"diag.noop","payload":{"source":"wrk"}}'
else
    local batch = {}
    for i = 1, jobs do
        batch[i] = '{"type":"diag.noop","payload":{"source":"wrk","n":' .. i .. '}}'
    end
    wrk.body = '{"jobs":[' .. table.concat(batch, ",") .. ']}'
end
