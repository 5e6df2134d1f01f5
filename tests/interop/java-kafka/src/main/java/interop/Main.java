package interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.cloudevents.CloudEvent;
import io.cloudevents.core.builder.CloudEventBuilder;
import io.cloudevents.core.message.Encoding;
import io.cloudevents.jackson.JsonFormat;
import io.cloudevents.kafka.CloudEventDeserializer;
import io.cloudevents.kafka.CloudEventSerializer;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The CloudEvents Java SDK's Kafka binding (cloudevents-kafka) for the eventmesh interop
 * tests (tests/interop/test_java_kafka.py).
 *
 * <pre>
 * produce BOOTSTRAP TOPIC binary|structured   one event (JSON) per stdin line, each sent
 *                                             with CloudEventSerializer (its partitionkey
 *                                             as the key); prints {"sent": N}
 * consume BOOTSTRAP TOPIC COUNT               reads the topic from the start with
 *                                             CloudEventDeserializer; one JSON line per
 *                                             event, until COUNT events or stdin closes
 * </pre>
 *
 * An event is {"specversion", "id", "source", "type", "datacontenttype", "dataschema",
 * "subject", "time", "extensions": {name: value}, "data_b64"}; "data_b64" is the data
 * bytes exactly, base64.
 */
public final class Main {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final DateTimeFormatter TIME =
      DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.nnnnnnnnn'Z'");

  private Main() {}

  public static void main(String[] args) throws Exception {
    if (args.length == 4 && args[0].equals("produce")) {
      produce(args[1], args[2], args[3]);
    } else if (args.length == 4 && args[0].equals("consume")) {
      consume(args[1], args[2], Integer.parseInt(args[3]));
    } else {
      System.err.println("usage: produce BOOTSTRAP TOPIC binary|structured | consume BOOTSTRAP TOPIC COUNT");
      System.exit(2);
    }
  }

  private static String text(JsonNode node, String name) {
    JsonNode value = node.get(name);
    return value == null || value.isNull() ? null : value.asText();
  }

  static CloudEvent build(JsonNode spec) {
    CloudEventBuilder builder =
        CloudEventBuilder.v1()
            .withId(text(spec, "id"))
            .withSource(URI.create(text(spec, "source")))
            .withType(text(spec, "type"));
    String contentType = text(spec, "datacontenttype");
    if (contentType != null) {
      builder.withDataContentType(contentType);
    }
    if (text(spec, "dataschema") != null) {
      builder.withDataSchema(URI.create(text(spec, "dataschema")));
    }
    if (text(spec, "subject") != null) {
      builder.withSubject(text(spec, "subject"));
    }
    if (text(spec, "time") != null) {
      builder.withTime(OffsetDateTime.parse(text(spec, "time")));
    }
    JsonNode extensions = spec.get("extensions");
    if (extensions != null) {
      Iterator<Map.Entry<String, JsonNode>> fields = extensions.fields();
      while (fields.hasNext()) {
        Map.Entry<String, JsonNode> field = fields.next();
        builder.withExtension(field.getKey(), field.getValue().asText());
      }
    }
    if (text(spec, "data_b64") != null) {
      builder.withData(Base64.getDecoder().decode(text(spec, "data_b64")));
    }
    return builder.build();
  }

  static ObjectNode describe(CloudEvent event, String key) {
    ObjectNode out = JSON.createObjectNode();
    out.put("specversion", event.getSpecVersion().toString());
    out.put("id", event.getId());
    out.put("source", event.getSource().toString());
    out.put("type", event.getType());
    if (event.getDataContentType() != null) {
      out.put("datacontenttype", event.getDataContentType());
    }
    if (event.getDataSchema() != null) {
      out.put("dataschema", event.getDataSchema().toString());
    }
    if (event.getSubject() != null) {
      out.put("subject", event.getSubject());
    }
    if (event.getTime() != null) {
      out.put("time", event.getTime().withOffsetSameInstant(ZoneOffset.UTC).format(TIME));
    }
    ObjectNode extensions = out.putObject("extensions");
    ObjectNode types = out.putObject("extension_types");
    for (String name : new TreeSet<>(event.getExtensionNames())) {
      Object value = event.getExtension(name);
      extensions.put(name, value.toString());
      types.put(name, value.getClass().getSimpleName());
    }
    if (event.getData() != null) {
      out.put("data_b64", Base64.getEncoder().encodeToString(event.getData().toBytes()));
    } else {
      out.putNull("data_b64");
    }
    out.put("key", key);
    return out;
  }

  private static void produce(String bootstrap, String topic, String mode) throws Exception {
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, CloudEventSerializer.class);
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 30_000);
    if (mode.equals("structured")) {
      props.put(CloudEventSerializer.ENCODING_CONFIG, Encoding.STRUCTURED);
      props.put(CloudEventSerializer.EVENT_FORMAT_CONFIG, JsonFormat.CONTENT_TYPE);
    } else if (mode.equals("binary")) {
      props.put(CloudEventSerializer.ENCODING_CONFIG, Encoding.BINARY);
    } else {
      throw new IllegalArgumentException("mode must be binary or structured: " + mode);
    }
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    int sent = 0;
    try (KafkaProducer<String, CloudEvent> producer = new KafkaProducer<>(props)) {
      String line;
      while ((line = in.readLine()) != null) {
        if (line.isBlank()) {
          continue;
        }
        CloudEvent event = build(JSON.readTree(line));
        // The binding's partitioning extension is the record's key; no key without it.
        Object key = event.getExtension("partitionkey");
        String keyText = key == null ? null : key.toString();
        producer.send(new ProducerRecord<>(topic, keyText, event)).get();
        sent++;
      }
    }
    System.out.println("{\"sent\": " + sent + "}");
  }

  private static void consume(String bootstrap, String topic, int count) throws Exception {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.GROUP_ID_CONFIG, "interop-" + UUID.randomUUID());
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, CloudEventDeserializer.class);
    Thread stdin =
        new Thread(
            () -> {
              try {
                while (System.in.read() != -1) {
                  // the test closes stdin to stop the consumer
                }
              } catch (Exception ignored) {
                // stop all the same
              }
              System.exit(0);
            });
    stdin.setDaemon(true);
    stdin.start();
    int seen = 0;
    try (KafkaConsumer<String, CloudEvent> consumer = new KafkaConsumer<>(props)) {
      consumer.subscribe(List.of(topic));
      System.out.println("SUBSCRIBED");
      System.out.flush();
      while (seen < count) {
        for (ConsumerRecord<String, CloudEvent> record : consumer.poll(Duration.ofMillis(200))) {
          if (record.value() == null) {
            continue; // a null value is no event: the deserializer never sees it
          }
          System.out.println(JSON.writeValueAsString(describe(record.value(), record.key())));
          System.out.flush();
          seen++;
        }
      }
    }
  }
}
