"""SageMaker hosting of the lorapipe image: endpoints (real-time or asynchronous) with autoscaling, and a client."""
