pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.kafka_secure", "tests.fixtures.llm"]
