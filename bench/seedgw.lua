-- bench/seedgw.lua: publish the way an OpenResty gateway of the kind
-- memq replaces does it (content_by_lua over the memcache protocol), as a
-- reference for bench/gateway.sh: the POST body goes to one node, chosen
-- round robin by this worker, with a `set` over a cosocket from the
-- worker's keepalive pool; 201 once the node says STORED.  A node that
-- fails is left for the next one, up to three tries.  Not part of memq.
--
-- nginx: content_by_lua_file .../seedgw.lua; with the nodes in
-- `set $seedgw_nodes "host:port host:port ...";` and the key in ?topic=.
-- lua-resty-memcached is not packaged by Debian; its set() is a send of
-- the command and a receive of one line, written out here.

-- per worker (globals are per request): the node list and the turn
local st = package.loaded.seedgw_state
if not st then
    st = { turn = 0, nodes = {} }
    for host, port in ngx.var.seedgw_nodes:gmatch("([^%s:]+):(%d+)") do
        st.nodes[#st.nodes + 1] = { host, tonumber(port) }
    end
    package.loaded.seedgw_state = st
end
local nodes = st.nodes

local key = ngx.var.arg_topic
if not key or not key:match("^[%w_.:-]+$") or #key > 250 then
    ngx.status = 400
    ngx.say('{"error":"bad key","status":400}')
    return
end

ngx.req.read_body()
local body = ngx.req.get_body_data()
if not body then
    ngx.status = 400
    ngx.say('{"error":"empty body","status":400}')
    return
end

local function set(node)
    local sock = ngx.socket.tcp()
    sock:settimeouts(1000, 60000, 60000)
    local ok, err = sock:connect(node[1], node[2])
    if not ok then
        return nil, err
    end
    ok, err = sock:send({ "set ", key, " 0 0 ", #body, "\r\n", body, "\r\n" })
    if not ok then
        sock:close()
        return nil, err
    end
    local line
    line, err = sock:receive()
    if not line then
        sock:close()
        return nil, err
    end
    sock:setkeepalive(60000, 100)
    return line
end

for _ = 1, math.min(3, #nodes) do
    st.turn = st.turn % #nodes + 1
    local node = nodes[st.turn]
    local line = set(node)
    if line == "STORED" then
        ngx.status = 201
        ngx.say('{"queued":1,"node":"', node[1], ":", node[2], '"}')
        return
    end
end

ngx.status = 503
ngx.say('{"error":"no node took it","status":503}')
