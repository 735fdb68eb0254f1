output "instance_id" {
  description = "The monitoring host's instance id."
  value       = aws_instance.monitoring.id
}

output "private_ip" {
  description = "The monitoring host's private address."
  value       = aws_instance.monitoring.private_ip
}
