package org.eventmesh.interop;

import com.sun.net.httpserver.HttpServer;
import io.cloudevents.CloudEvent;
import io.cloudevents.core.builder.CloudEventBuilder;
import io.cloudevents.core.format.EventFormat;
import io.cloudevents.core.provider.EventFormatProvider;
import io.cloudevents.jackson.JsonFormat;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.eventmesh.client.grpc.config.EventMeshGrpcClientConfig;
import org.apache.eventmesh.client.grpc.consumer.EventMeshGrpcConsumer;
import org.apache.eventmesh.client.grpc.consumer.ReceiveMsgHook;
import org.apache.eventmesh.client.grpc.producer.EventMeshGrpcProducer;
import org.apache.eventmesh.client.http.conf.EventMeshHttpClientConfig;
import org.apache.eventmesh.client.http.consumer.EventMeshHttpConsumer;
import org.apache.eventmesh.client.http.producer.EventMeshHttpProducer;
import org.apache.eventmesh.common.EventMeshMessage;
import org.apache.eventmesh.common.enums.EventMeshProtocolType;
import org.apache.eventmesh.common.protocol.SubscriptionItem;
import org.apache.eventmesh.common.protocol.SubscriptionMode;
import org.apache.eventmesh.common.protocol.SubscriptionType;
import org.apache.eventmesh.common.protocol.grpc.common.Response;

/**
 * Apache EventMesh's own Java SDK (1.10.0-release) against the eventmesh sidecar. One JVM per
 * role; tests/interop/test_java_sdk.py drives it and reads its stdout, one fact per line:
 *
 * <pre>
 *   grpc-pub N TOPIC GRPC_PORT         N publish() then one publish(List) of 2: SENT and RESP lines
 *   http-pub N TOPIC HTTP_PORT         N CloudEvents and one EventMeshMessage: SENT lines
 *   grpc-sub N TOPIC GRPC_PORT GROUP [reply]
 *                                      READY, then GOT per event (with "reply" the handler
 *                                      answers each); after N: HEARTBEAT lines, unsubscribe,
 *                                      UNSUBSCRIBED; then waits for a line on stdin and
 *                                      prints TOTAL and NULLS
 *   grpc-rr N TOPIC GRPC_PORT          N requestReply(): SENT and REPLY lines
 *   http-sub N TOPIC HTTP_PORT GROUP [retry]
 *                                      a webhook on 127.0.0.1:0; READY, then PUSH per request
 *                                      (with "retry" the first is answered retCode 2); after
 *                                      N distinct events (and the retry): unsubscribe,
 *                                      UNSUBSCRIBED, a line on stdin, then TOTAL
 * </pre>
 *
 * The last line is "P passed, F failed": the checks this program could make itself. The
 * system properties interop.user and interop.password set the clients' userName and password.
 */
public final class InteropMain {
    private static int passed;
    private static int failed;

    private static final String USER = System.getProperty("interop.user", "username");
    private static final String PASSWORD = System.getProperty("interop.password", "passwd");

    private InteropMain() {}

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        int n = Integer.parseInt(args[1]);
        String topic = args[2];
        int port = Integer.parseInt(args[3]);
        String group = args.length > 4 ? args[4] : "interop-group";
        try {
            switch (mode) {
                case "grpc-pub" -> grpcPub(n, topic, port);
                case "http-pub" -> httpPub(n, topic, port);
                case "grpc-sub" -> grpcSub(n, topic, port, group, args.length > 5 && "reply".equals(args[5]));
                case "grpc-rr" -> grpcRequestReply(n, topic, port);
                case "http-sub" -> httpSub(n, topic, port, group, args.length > 5 && "retry".equals(args[5]));
                default -> throw new IllegalArgumentException("unknown mode " + mode);
            }
        } catch (Exception e) {
            e.printStackTrace(System.out);
            check(false, "unexpected exception " + e);
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.out.flush();
        System.exit(failed == 0 ? 0 : 1);
    }

    private static void check(boolean ok, String what) {
        if (ok) {
            passed++;
        } else {
            failed++;
            System.out.println("FAILED " + what);
        }
    }

    private static String sha(byte[] data) throws Exception {
        if (data == null) {
            return "none";
        }
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    private static CloudEvent event(String topic, int i) {
        return CloudEventBuilder.v1()
                .withId(UUID.randomUUID().toString())
                .withSource(URI.create("/interop/java-sdk"))
                .withType("org.eventmesh.interop.test")
                .withSubject(topic)
                .withTime(OffsetDateTime.now())
                .withDataContentType("application/json")
                .withData(("{\"n\":" + i + ",\"text\":\"caf\u00e9\"}").getBytes(StandardCharsets.UTF_8))
                .withExtension("traceid", "t" + i)
                .build();
    }

    private static void sent(CloudEvent ce) throws Exception {
        byte[] data = ce.getData() == null ? null : ce.getData().toBytes();
        System.out.println("SENT " + ce.getId() + " " + ce.getSubject() + " " + ce.getType() + " " + sha(data));
    }

    // -- producers -------------------------------------------------------------------------

    private static void grpcPub(int n, String topic, int port) throws Exception {
        EventMeshGrpcClientConfig config = EventMeshGrpcClientConfig.builder()
                .serverAddr("127.0.0.1")
                .serverPort(port)
                .producerGroup("interop-producer")
                .env("test")
                .idc("idc1")
                .sys("1234")
                .userName(USER)
                .password(PASSWORD)
                .build();
        try (EventMeshGrpcProducer producer = new EventMeshGrpcProducer(config)) {
            for (int i = 0; i < n; i++) {
                CloudEvent ce = event(topic, i);
                Response response = producer.publish(ce);
                check(response != null, "publish returned null (the RPC failed)");
                if (response != null) {
                    System.out.println("RESP " + response.getRespCode() + " " + response.getRespTime());
                    check("0".equals(response.getRespCode()), "publish code " + response.getRespCode()
                            + ": " + response.getRespMsg());
                    check(response.getRespTime() != null, "publish respTime is null");
                    sent(ce);
                }
            }
            List<CloudEvent> batch = List.of(event(topic, n), event(topic, n + 1));
            Response response = producer.publish(batch);
            check(response != null, "batch publish returned null (the RPC failed)");
            if (response != null) {
                System.out.println("RESP " + response.getRespCode() + " " + response.getRespTime());
                check("0".equals(response.getRespCode()), "batch code " + response.getRespCode()
                        + ": " + response.getRespMsg());
                check(response.getRespTime() != null, "batch respTime is null");
                for (CloudEvent ce : batch) {
                    sent(ce);
                }
            }
        }
    }

    private static void grpcRequestReply(int n, String topic, int port) throws Exception {
        EventMeshGrpcClientConfig config = EventMeshGrpcClientConfig.builder()
                .serverAddr("127.0.0.1")
                .serverPort(port)
                .producerGroup("interop-requester")
                .env("test")
                .idc("idc1")
                .sys("1234")
                .userName(USER)
                .password(PASSWORD)
                .build();
        try (EventMeshGrpcProducer producer = new EventMeshGrpcProducer(config)) {
            for (int i = 0; i < n; i++) {
                CloudEvent ce = event(topic, i);
                CloudEvent reply = producer.requestReply(ce, 20_000);
                check(reply != null, "requestReply returned null");
                sent(ce);
                if (reply != null) {
                    byte[] data = reply.getData() == null ? null : reply.getData().toBytes();
                    System.out.println("REPLY " + ce.getId() + " " + reply.getId() + " " + reply.getType()
                            + " " + new String(data == null ? new byte[0] : data, StandardCharsets.UTF_8)
                            + " " + reply.getExtension("correlationid") + " " + reply.getExtension("statuscode"));
                }
            }
        }
    }

    private static EventMeshHttpClientConfig httpConfig(int port, String group) {
        return EventMeshHttpClientConfig.builder()
                .liteEventMeshAddr("127.0.0.1:" + port)
                .producerGroup("interop-producer")
                .consumerGroup(group)
                .env("test")
                .idc("idc1")
                .ip("127.0.0.1")
                .sys("1234")
                .pid(String.valueOf(ProcessHandle.current().pid()))
                .userName(USER)
                .password(PASSWORD)
                .build();
    }

    private static void httpPub(int n, String topic, int port) throws Exception {
        try (EventMeshHttpProducer producer = new EventMeshHttpProducer(httpConfig(port, "interop-consumer"))) {
            for (int i = 0; i < n; i++) {
                CloudEvent ce = CloudEventBuilder.from(event(topic, i))
                        .withDataContentType("application/cloudevents+json")
                        .build();
                producer.publish(ce); // throws unless HTTP 2xx with retCode 0
                check(true, "http publish");
                sent(ce);
            }
            String content = "plain message for " + topic;
            EventMeshMessage message = EventMeshMessage.builder()
                    .bizSeqNo(String.valueOf(System.nanoTime()))
                    .uniqueId(UUID.randomUUID().toString())
                    .topic(topic)
                    .content(content)
                    .prop(Map.of("ttl", "4000"))
                    .build();
            producer.publish(message);
            check(true, "http eventmeshmessage publish");
            System.out.println("SENT " + message.getUniqueId() + " " + topic + " eventmeshmessage "
                    + sha(content.getBytes(StandardCharsets.UTF_8)));
        }
    }

    // -- consumers -------------------------------------------------------------------------

    private static void awaitCount(AtomicInteger count, int n, long seconds) throws InterruptedException {
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        while (count.get() < n && System.nanoTime() < deadline) {
            Thread.sleep(20);
        }
    }

    private static void awaitStdin() throws Exception {
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)).readLine();
    }

    private static void grpcSub(int n, String topic, int port, String group, boolean reply) throws Exception {
        EventMeshGrpcClientConfig config = EventMeshGrpcClientConfig.builder()
                .serverAddr("127.0.0.1")
                .serverPort(port)
                .consumerGroup(group)
                .env("test")
                .idc("idc1")
                .sys("1234")
                .userName(USER)
                .password(PASSWORD)
                .build();
        AtomicInteger count = new AtomicInteger();
        AtomicInteger nulls = new AtomicInteger();
        EventMeshGrpcConsumer consumer = new EventMeshGrpcConsumer(config);
        consumer.init();
        consumer.registerListener(new ReceiveMsgHook<CloudEvent>() {
            @Override
            public Optional<CloudEvent> handle(CloudEvent ce) throws Exception {
                if (ce == null) {
                    nulls.incrementAndGet();
                    System.out.println("NULL");
                    return Optional.empty();
                }
                byte[] data = ce.getData() == null ? null : ce.getData().toBytes();
                System.out.println("GOT " + ce.getId() + " " + ce.getSubject() + " " + ce.getType() + " "
                        + sha(data) + " " + ce.getExtension("seqnum") + " " + ce.getExtension("uniqueid")
                        + " " + ce.getExtension("passwd") + " " + ce.getExtension("traceid"));
                count.incrementAndGet();
                if (!reply) {
                    return Optional.empty();
                }
                return Optional.of(CloudEventBuilder.v1()
                        .withId("reply-" + ce.getId())
                        .withSource(URI.create("/interop/responder"))
                        .withType("org.eventmesh.interop.reply")
                        .withSubject(topic)
                        .withDataContentType("application/json")
                        .withData(("{\"answer\":\"" + ce.getId() + "\"}").getBytes(StandardCharsets.UTF_8))
                        .build());
            }

            @Override
            public EventMeshProtocolType getProtocolType() {
                return EventMeshProtocolType.CLOUD_EVENTS;
            }
        });
        List<SubscriptionItem> items =
                List.of(new SubscriptionItem(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC));
        consumer.subscribe(items);
        // The stream is open once the server answered the subscription: a heartbeat for the
        // topic says "0" only then.
        long deadline = System.nanoTime() + 30_000_000_000L;
        String code = heartbeat(consumer, group, topic);
        while (!"0".equals(code) && System.nanoTime() < deadline) {
            Thread.sleep(50);
            code = heartbeat(consumer, group, topic);
        }
        check("0".equals(code), "heartbeat while subscribed answered " + code);
        System.out.println("READY");
        System.out.flush();
        awaitCount(count, n, 60);
        System.out.println("HEARTBEAT " + heartbeat(consumer, group, topic));
        System.out.println("HEARTBEAT-UNKNOWN " + heartbeat(consumer, group, topic + ".never"));
        Response response = consumer.unsubscribe(items);
        System.out.println("UNSUBSCRIBED " + (response == null ? "null" : response.getRespCode()));
        System.out.flush();
        awaitStdin();
        System.out.println("TOTAL " + count.get());
        System.out.println("NULLS " + nulls.get());
        consumer.close();
    }

    /** A heartbeat as the SDK's timer sends it; the status code of the answer. */
    private static String heartbeat(EventMeshGrpcConsumer consumer, String group, String topic) {
        org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent request =
                org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent.newBuilder()
                        .setId("")
                        .setSource("")
                        .setSpecVersion("1.0")
                        .setType("")
                        .putAttributes("consumergroup", str(group))
                        .putAttributes("env", str("test"))
                        .putAttributes("idc", str("idc1"))
                        .putAttributes("username", str(USER))
                        .putAttributes("passwd", str(PASSWORD))
                        .putAttributes("datacontenttype", str("application/json"))
                        .putAttributes("clienttype",
                                org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent
                                        .CloudEventAttributeValue.newBuilder().setCeInteger(2).build())
                        .setTextData("[{\"topic\":\"" + topic + "\",\"url\":\"grpc_stream\"}]")
                        .build();
        org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent answer =
                consumer.getHeartbeatClient().heartbeat(request);
        var status = answer.getAttributesMap().get("statuscode");
        return status == null ? "none" : status.getCeString();
    }

    private static org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent.CloudEventAttributeValue str(
            String value) {
        return org.apache.eventmesh.common.protocol.grpc.cloudevents.CloudEvent.CloudEventAttributeValue
                .newBuilder().setCeString(value).build();
    }

    private static Map<String, String> form(String body) {
        Map<String, String> fields = new HashMap<>();
        for (String pair : body.split("&")) {
            int eq = pair.indexOf('=');
            if (eq > 0) {
                fields.put(URLDecoder.decode(pair.substring(0, eq), StandardCharsets.UTF_8),
                        URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8));
            }
        }
        return fields;
    }

    private static void httpSub(int n, String topic, int port, String group, boolean retryFirst) throws Exception {
        EventFormat format = EventFormatProvider.getInstance().resolveFormat(JsonFormat.CONTENT_TYPE);
        Map<String, Integer> seen = new ConcurrentHashMap<>();
        AtomicInteger pushes = new AtomicInteger();
        AtomicInteger distinct = new AtomicInteger();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        server.createContext("/hook", exchange -> {
            String body = new String(exchange.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
            Map<String, String> fields = form(body);
            int push = pushes.incrementAndGet();
            String line;
            try {
                CloudEvent ce = format.deserialize(fields.getOrDefault("content", "").getBytes(StandardCharsets.UTF_8));
                byte[] data = ce.getData() == null ? null : ce.getData().toBytes();
                line = "PUSH " + exchange.getRequestHeaders().getFirst("code") + " " + fields.get("topic") + " "
                        + ce.getId() + " " + ce.getSubject() + " " + ce.getType() + " " + sha(data) + " "
                        + fields.get("uniqueid") + " " + ce.getExtension("passwd") + " "
                        + (fields.containsKey("bizseqno") && fields.containsKey("randomNo")
                                && fields.containsKey("extFields"));
                if (seen.merge(ce.getId(), 1, Integer::sum) == 1) {
                    distinct.incrementAndGet();
                }
            } catch (Exception e) {
                line = "BADPUSH " + e;
            }
            boolean retry = retryFirst && push == 1;
            System.out.println(line + (retry ? " RETRY" : ""));
            System.out.flush();
            byte[] answer = ("{\"retCode\":" + (retry ? 2 : 0) + "}").getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().add("Content-Type", "application/json");
            exchange.sendResponseHeaders(200, answer.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(answer);
            }
        });
        server.start();
        String url = "http://127.0.0.1:" + server.getAddress().getPort() + "/hook";
        List<SubscriptionItem> items =
                List.of(new SubscriptionItem(topic, SubscriptionMode.CLUSTERING, SubscriptionType.ASYNC));
        try (EventMeshHttpConsumer consumer = new EventMeshHttpConsumer(httpConfig(port, group))) {
            consumer.subscribe(items, url); // throws unless retCode 0
            check(true, "http subscribe");
            consumer.heartBeat(items, url);
            System.out.println("READY");
            System.out.flush();
            awaitCount(distinct, n, 60);
            if (retryFirst) { // and the retry of the first, which comes after its backoff
                awaitCount(pushes, n + 1, 60);
            }
            List<String> topics = new ArrayList<>();
            topics.add(topic);
            consumer.unsubscribe(topics, url);
            check(true, "http unsubscribe");
            System.out.println("UNSUBSCRIBED");
            System.out.flush();
            awaitStdin();
            System.out.println("TOTAL " + distinct.get() + " " + pushes.get());
        } finally {
            server.stop(0);
        }
    }
}
