%% @doc The top supervisor of the `erlmcp_flow' application: it starts the node's default
%% instances from the application environment (see {@link erlmcp_flow_app}).
%%
%% <h3>Children, in start order</h3>
%% <ol>
%% <li>`erlmcp_flow_router' (env `router'): the agents' inboxes, in `router_dir';</li>
%% <li>`erlmcp_flow_batch_processor' (env `batch_processor'): batches for the ring `batch_ring'
%%     in `batch_ring_dir' (the application opens or creates that ring before this supervisor
%%     starts);</li>
%% <li>`erlmcp_flow_queue' (env `queue'): the default task queue;</li>
%% <li>`erlmcp_flow_lru_cache' (env `lru_cache'): the default cache;</li>
%% <li>`erlmcp_flow_scheduler' (env `scheduler', default `false'): the agents' scheduler;</li>
%% <li>`erlmcp_flow_pool_manager' (env `pool_manager', default `false'): a pool of agents
%%     registered with that scheduler (so it needs `scheduler' on).</li>
%% </ol>
%% The coming children of the original design go after these, in this order: the Raft
%% consensus and the gossip protocol. Children stop in the reverse order. A default instance whose env value is `false'
%% is not started (it is absent from `supervisor:which_children/1'); `true' uses its module's
%% defaults; a map is passed to its `start_link' (the router's and the batch processor's
%% `name' is always their default registered name).
%%
%% <h3>Restarts</h3>
%% `one_for_one', every child `permanent', at most `restart_intensity' (10) restarts in
%% `restart_period' (10) seconds. What a restarted default instance finds:
%% <ul>
%% <li>router: the inboxes are files in `router_dir'; the new router sends to the existing
%%     ones (registered agents keep their consumers and unread messages); the killed router's
%%     engine handle is closed at once;</li>
%% <li>batch processor: adopts the killed server's engine processor, messages not yet written
%%     to the ring included, and writes them (nothing is lost);</li>
%% <li>queue: takes the killed server's queue over, tasks included;</li>
%% <li>cache: takes the killed server's cache over, entries included;</li>
%% <li>scheduler: closes the killed server's engine scheduler, opens its ledger again and
%%     registers again the agents it left that are still alive; with a durable ledger
%%     (`ledger => {shm, Name}' or `{file, Path}') the tasks accepted and not ended are
%%     recovered and delivered again, their results sent to their submitters; with the
%%     default `memory' ledger they are gone;</li>
%% <li>pool manager: adopts the agents the killed manager left that are still alive, and
%%     starts more to keep `min_size'.</li>
%% </ul>
%% A shutdown (by this supervisor, or the application's stop) is an orderly end instead: the
%% batch processor drains for up to its `drain_timeout', the queue is closed (tasks left are
%% dropped with a warning), the cache released, the pool manager stops its agents, and the
%% scheduler sends each task not ended `{dead_letter, <<"scheduler stopped">>}' when its
%% ledger is `memory' (a durable ledger keeps them for the next start).
-module(erlmcp_flow_sup).
-behaviour(supervisor).

-export([start_link/0, children/0]).
-export([init/1]).

-define(SERVER, ?MODULE).
-define(APP, erlmcp_flow).

%% @doc Starts the supervisor, registered as `erlmcp_flow_sup' (the application does this).
-spec start_link() -> {ok, pid()} | ignore | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?SERVER}, ?MODULE, []).

%% @doc The child specifications the application environment gives now, in start order
%% (the default instances that are not turned off).
-spec children() -> [supervisor:child_spec()].
children() ->
    lists:append([router(env(router)),
                   batch_processor(env(batch_processor)),
                   queue(env(queue)),
                   lru_cache(env(lru_cache)),
                   worker(erlmcp_flow_scheduler, env(scheduler, false)),
                   worker(erlmcp_flow_pool_manager, env(pool_manager, false))
                   %% Next, in this order: Raft, gossip.
                  ]).

%% @private
init([]) ->
    Flags = #{strategy => one_for_one,
              intensity => application:get_env(?APP, restart_intensity, 10),
              period => application:get_env(?APP, restart_period, 10)},
    {ok, {Flags, children()}}.

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

router(false) ->
    [];
router(Opts) ->
    [child(erlmcp_flow_router, [Opts#{name => {local, erlmcp_flow_router}}], 5000)].

batch_processor(false) ->
    [];
batch_processor(Opts) ->
    Drain = maps:get(drain_timeout, Opts, 1000),
    Dir = application:get_env(?APP, batch_ring_dir, undefined),
    Full = case Dir of
               undefined -> Opts;
               _ -> maps:merge(#{dir => Dir}, Opts)
           end,
    %% The shutdown leaves time for the drain (terminate/2 waits up to drain_timeout).
    [child(erlmcp_flow_batch_processor,
           [erlmcp_flow_app:batch_ring_name(),
            Full#{name => {local, erlmcp_flow_batch_processor}}],
           shutdown(Drain))].

queue(false) -> [];
queue(Opts) -> [child(erlmcp_flow_queue, [Opts], 5000)].

lru_cache(false) -> [];
lru_cache(Opts) -> [child(erlmcp_flow_lru_cache, [Opts], 5000)].

worker(_Module, false) -> [];
worker(Module, Opts) -> [child(Module, [Opts], 5000)].

child(Module, Args, Shutdown) ->
    #{id => Module,
      start => {Module, start_link, Args},
      restart => permanent,
      shutdown => Shutdown,
      type => worker,
      modules => [Module]}.

shutdown(Drain) when is_integer(Drain), Drain >= 0 -> Drain + 5000;
shutdown(_) -> 5000. % a bad drain_timeout fails in start_link with a clear error

%% true: the module's defaults; false: off; a map: options.
env(Key) ->
    env(Key, #{}).

env(Key, Default) ->
    case application:get_env(?APP, Key, Default) of
        true -> #{};
        false -> false;
        Opts when is_map(Opts) -> Opts;
        Other -> erlang:error({bad_env, Key, Other})
    end.
