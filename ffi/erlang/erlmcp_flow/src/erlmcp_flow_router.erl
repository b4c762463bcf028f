%% @doc Routes messages to agents' inboxes by name (the engine's `emf_router_*').
%%
%% Every agent has an inbox: a multi-producer ring `inbox.Agent' in the router's directory,
%% created when the agent registers, that any process of the machine can send to by name.
%%
%% ```
%% {ok, _} = erlmcp_flow_router:start_link(#{dir => "/dev/shm"}),
%% {ok, Inbox} = erlmcp_flow_router:register_agent(<<"planner">>),
%% ok = erlmcp_flow_router:send_direct(<<"planner">>, <<"task 1">>),
%% {ok, 2} = erlmcp_flow_router:send_batch(<<"planner">>, [<<"task 2">>, <<"task 3">>]),
%% {ok, <<"task 1">>} = erlmcp_flow_ring:recv(Inbox, 1000).
%% '''
%%
%% <h3>Ownership</h3>
%% An engine router is a one-thread-at-a-time object, so it is owned by this gen_server: every
%% call goes through the server process, which alone uses the handle (one engine producer per
%% agent for the whole router, whatever the number of callers: an inbox has 16 producer slots
%% for the whole machine). `start_link/0,1' registers the server as `erlmcp_flow_router' (the
%% functions without a server argument use it); `name => undefined' starts an anonymous one,
%% used through its pid with the functions taking a `Router' argument.
%%
%% <h3>Restarts</h3>
%% The inboxes are files in the router's directory, not state of the server: a router started
%% after another one stopped or was killed (a supervisor's restart) sends to the existing
%% inboxes as they are (the engine opens an agent's inbox, it never recreates one): registered
%% agents stay registered, keep their consumers and their unread messages, and sends to them
%% work at once. A registered server publishes its engine router with `persistent_term'; when
%% one was killed outright, the next server of that name closes the router it left, releasing
%% its producer in each inbox at once (an inbox has 16 producer slots for the whole machine).
%%
%% <h3>Results</h3>
%% `send_direct/2,3': `ok', `{error, {full, _}}' (the inbox is full: nothing was sent; retry
%% later), `{error, {not_found, _}}' (the agent has no inbox), `{error, {too_large, _}}'.
%% `send_batch/2,3' sends in order and returns `{ok, Count}' when every message was accepted,
%% or `{partial, Accepted, NotAccepted}': the first `Accepted' messages were sent, and
%% `NotAccepted' is the list of the others, in order, exactly as passed: they were not sent and
%% are the caller's to resend (never dropped silently). A message larger than the inbox's
%% largest frame (a quarter of its capacity, less 8 bytes) refuses the whole batch
%% (`too_large', nothing sent). A router that is not running gives `{error, {closed, _}}'.
%%
%% The consumer returned by `register_agent/1,2' is an `erlmcp_flow_ring' consumer: read it
%% with `erlmcp_flow_ring:recv/2', `recv_batch/3' or `deliver/2,3'. It is the inbox's primary
%% consumer: registering an agent again while its consumer is held gives `{error, {busy, _}}';
%% once released (`erlmcp_flow_ring:close/1' or garbage collected), the next registration
%% resumes where it stopped, unread messages included.
-module(erlmcp_flow_router).
-behaviour(gen_server).

-export([start_link/0, start_link/1, start/0, start/1, stop/0, stop/1,
         register_agent/1, register_agent/2, unregister_agent/1, unregister_agent/2,
         send_direct/2, send_direct/3, send_batch/2, send_batch/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([options/0, router/0, agent/0]).

-type options() :: #{name => {local, atom()} | {global, term()} | {via, module(), term()}
                             | undefined,
                     dir => file:filename_all(),
                     inbox_capacity => pos_integer()}.
%% `name': how the server is registered (`{local, erlmcp_flow_router}'; `undefined': not at
%% all); `dir': directory of the inboxes (the application environment's `router_dir', else
%% /dev/shm); `inbox_capacity': bytes of each inbox created, a power of two from 4096 to 1 GiB
%% (1 MiB).
-type router() :: pid() | atom() | {global, term()} | {via, module(), term()}.
-type agent() :: binary() | string() | atom().
%% 1 to 194 characters of `A-Z a-z 0-9 . _ -' (the inbox ring is named `inbox.Agent').
-type error() :: erlmcp_flow_nif:error().

-define(SERVER, ?MODULE).
-define(KEYS, [name, dir, inbox_capacity]).

%%--------------------------------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------------------------------

%% @equiv start_link(#{})
-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc Starts a router linked to the caller (registered as `erlmcp_flow_router' unless
%% `name' says otherwise).
-spec start_link(options()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    start(Opts, start_link).

%% @equiv start(#{})
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    start(#{}).

%% @doc As `start_link/1', without a link.
-spec start(options()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    start(Opts, start).

%% @equiv stop(erlmcp_flow_router)
-spec stop() -> ok.
stop() ->
    stop(?SERVER).

%% @doc Stops the router; its producers detach (the inboxes stay).
-spec stop(router()) -> ok.
stop(Router) ->
    gen_server:stop(Router).

%% @equiv register_agent(erlmcp_flow_router, Agent)
-spec register_agent(agent()) -> {ok, erlmcp_flow_nif:consumer()} | error().
register_agent(Agent) ->
    register_agent(?SERVER, Agent).

%% @doc Creates `Agent''s inbox (or reopens it after a restart) and returns its consumer.
-spec register_agent(router(), agent()) -> {ok, erlmcp_flow_nif:consumer()} | error().
register_agent(Router, Agent) ->
    call(Router, {register, name(Agent)}).

%% @equiv unregister_agent(erlmcp_flow_router, Agent)
-spec unregister_agent(agent()) -> ok | error().
unregister_agent(Agent) ->
    unregister_agent(?SERVER, Agent).

%% @doc Removes `Agent''s inbox (processes that have it mapped keep it until they let go).
-spec unregister_agent(router(), agent()) -> ok | error().
unregister_agent(Router, Agent) ->
    call(Router, {unregister, name(Agent)}).

%% @equiv send_direct(erlmcp_flow_router, Agent, Message)
-spec send_direct(agent(), iodata()) -> ok | error().
send_direct(Agent, Message) ->
    send_direct(?SERVER, Agent, Message).

%% @doc Sends one message to `Agent''s inbox: `{error, {full, _}}' when it is full (nothing
%% was sent), `{error, {not_found, _}}' when the agent has no inbox.
-spec send_direct(router(), agent(), iodata()) -> ok | error().
send_direct(Router, Agent, Message) ->
    call(Router, {send, name(Agent), Message}).

%% @equiv send_batch(erlmcp_flow_router, Agent, Messages)
-spec send_batch(agent(), [iodata()]) ->
          {ok, non_neg_integer()}
        | {partial, non_neg_integer(), [iodata(), ...]}
        | error().
send_batch(Agent, Messages) ->
    send_batch(?SERVER, Agent, Messages).

%% @doc Sends `Messages' to `Agent' in order: `{ok, Count}' when all were accepted, else
%% `{partial, Accepted, NotAccepted}' where `NotAccepted' are the messages not sent, in order
%% (the inbox was full): nothing is dropped silently.
-spec send_batch(router(), agent(), [iodata()]) ->
          {ok, non_neg_integer()}
        | {partial, non_neg_integer(), [iodata(), ...]}
        | error().
send_batch(Router, Agent, Messages) when is_list(Messages) ->
    case call(Router, {send_batch, name(Agent), Messages}) of
        {ok, Accepted} ->
            case lists:nthtail(Accepted, Messages) of
                [] -> {ok, Accepted};
                NotAccepted -> {partial, Accepted, NotAccepted}
            end;
        {error, _} = Error ->
            Error
    end;
send_batch(_Router, _Agent, _Messages) ->
    invalid("messages: expected a list of binaries or iodata").

%%--------------------------------------------------------------------------------------------
%% gen_server
%%--------------------------------------------------------------------------------------------

-record(state, {router :: erlmcp_flow_nif:router(),
                %% The persistent_term key under which a registered server publishes its
                %% engine router (undefined: anonymous), so that a successor started after
                %% this one was killed frees it at once (see init/1).
                key :: {module(), term()} | undefined,
                %% Agents this router has a producer for (a scheduling hint for the NIF: a
                %% send to them does not open a file).
                attached = #{} :: #{binary() => true}}).

%% @private
init({Router, Key}) ->
    process_flag(trap_exit, true), % terminate/2 closes the router on shutdown
    publish(Key, Router),
    {ok, #state{router = Router, key = Key}}.

%% @private
handle_call({send, Agent, Message}, _From, #state{router = R, attached = A} = S) ->
    Result = erlmcp_flow_nif:router_send_direct(R, Agent, Message, maps:is_key(Agent, A)),
    {reply, Result, attached(Agent, Result, S)};
handle_call({send_batch, Agent, Messages}, _From, #state{router = R, attached = A} = S) ->
    Result = erlmcp_flow_nif:router_send_batch(R, Agent, Messages, maps:is_key(Agent, A)),
    {reply, Result, attached(Agent, Result, S)};
handle_call({register, Agent}, _From, #state{router = R} = S) ->
    {reply, erlmcp_flow_nif:router_register_agent(R, Agent), S};
handle_call({unregister, Agent}, _From, #state{router = R, attached = A} = S) ->
    Result = erlmcp_flow_nif:router_unregister_agent(R, Agent),
    {reply, Result, S#state{attached = maps:remove(Agent, A)}};
handle_call(_Request, _From, S) ->
    {reply, invalid("unknown request"), S}.

%% @private
handle_cast(_Msg, S) ->
    {noreply, S}.

%% @private
handle_info(_Info, S) ->
    {noreply, S}.

%% @private
terminate(_Reason, #state{router = R, key = Key}) ->
    case Key =/= undefined andalso persistent_term:get(Key, undefined) of
        R -> _ = persistent_term:erase(Key), ok;
        _ -> ok
    end,
    erlmcp_flow_nif:router_close(R).

%%--------------------------------------------------------------------------------------------
%% Internal
%%--------------------------------------------------------------------------------------------

start(Opts, How) when is_map(Opts) ->
    case maps:keys(maps:without(?KEYS, Opts)) of
        [] ->
            Dir = case maps:get(dir, Opts, application:get_env(erlmcp_flow, router_dir,
                                                               undefined)) of
                      undefined -> undefined;
                      D -> path(D)
                  end,
            %% The engine router is made here, so that a bad option is an error of this call
            %% rather than the crash of a linked server; the server owns it from now on.
            case erlmcp_flow_nif:router_new(Dir, maps:get(inbox_capacity, Opts, 0)) of
                {ok, Router} ->
                    case maps:get(name, Opts, {local, ?SERVER}) of
                        undefined -> gen_server:How(?MODULE, {Router, undefined}, []);
                        Name -> gen_server:How(Name, ?MODULE, {Router, {?MODULE, Name}}, [])
                    end;
                {error, _} = Error ->
                    Error
            end;
        Unknown ->
            invalid(io_lib:format("unknown options ~0p (known: ~0p)", [Unknown, ?KEYS]))
    end;
start(_Opts, _How) ->
    invalid("options: expected a map").

%% A registered server publishes its engine router under Key. One found there was left by a
%% server of the same name that was killed (an orderly end unpublishes it): nobody uses it any
%% more, but the handle could stay alive for long (the supervisor that started the dead server
%% may still hold the term), and with it a producer in every inbox it sent to (an inbox has 16
%% producer slots for the whole machine). It is closed now. The inboxes themselves are files
%% in the router's directory: the new router sends to them as they are (the engine opens an
%% agent's existing inbox; nothing is created or cleared), unread messages and the agents'
%% consumers untouched.
publish(undefined, _Router) ->
    ok;
publish(Key, Router) ->
    case persistent_term:get(Key, undefined) of
        undefined -> ok;
        Old -> _ = erlmcp_flow_nif:router_close(Old), ok
    end,
    persistent_term:put(Key, Router).

%% After a send: the router holds a producer for the agent once a send reached its inbox
%% (sent, or refused because the inbox is full).
attached(Agent, Result, #state{attached = A} = S) ->
    case Result of
        ok -> S#state{attached = A#{Agent => true}};
        {ok, _} -> S#state{attached = A#{Agent => true}};
        {error, {full, _}} -> S#state{attached = A#{Agent => true}};
        _ -> S
    end.

call(Router, Request) ->
    try
        gen_server:call(Router, Request, infinity)
    catch
        exit:{Reason, {gen_server, call, _}} when Reason =:= noproc; Reason =:= normal;
                                                   Reason =:= shutdown;
                                                   element(1, Reason) =:= shutdown ->
            {error, {closed, <<"erlmcp_flow_router: the router is not running">>}}
    end.

name(Name) when is_atom(Name) -> atom_to_binary(Name, utf8);
name(Name) when is_list(Name) -> unicode_or_term(Name);
name(Name) -> Name.

path(Path) when is_atom(Path) -> atom_to_binary(Path, utf8);
path(Path) when is_list(Path) -> unicode_or_term(Path);
path(Path) -> Path.

unicode_or_term(Chars) ->
    try unicode:characters_to_binary(Chars) of
        Bin when is_binary(Bin) -> Bin;
        _ -> Chars
    catch
        error:badarg -> Chars
    end.

-spec invalid(iodata()) -> error().
invalid(Text) ->
    {error, {invalid_argument, unicode:characters_to_binary(Text)}}.
